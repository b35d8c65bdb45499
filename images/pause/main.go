// Command pause is the pod sandbox's process, as Kubernetes' build/pause: it sleeps until SIGINT or
// SIGTERM and reaps orphaned children (it is PID 1 of the pod's PID namespace when that is shared).
// Built static (CGO_ENABLED=0) and packed by images/ociarchive as registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
