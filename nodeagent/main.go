// Command nodeagent joins this machine to a Kubernetes cluster the way `kubeadm join` does, and is the
// initramfs's /init on a PXE-booted machine's first boot. See ../README.md.
package main

import (
	"context"
	"os"

	"github.com/pxejoin/pxejoin/nodeagent/cli"
	"github.com/pxejoin/pxejoin/nodeagent/initmode"
)

func main() {
	if initmode.IsInit() {
		initmode.Main(initmode.Config{Join: cli.InitJoin}) // never returns
	}
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
