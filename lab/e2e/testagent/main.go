// Command testagent is nodeagent's init mode on its own: nodeagent/initmode wired to the join engine,
// exactly as nodeagent's main is to wire it (see initmode.Config). The VM tests use it while
// nodeagent's main does not run initmode as PID 1; with PXEJOIN_AGENT=bin/nodeagent they use the real
// binary instead.
package main

import (
	"context"
	"os"

	"github.com/pxejoin/pxejoin/bootstatus"
	"github.com/pxejoin/pxejoin/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/initmode"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

func main() {
	initmode.Main(initmode.Config{Join: func(ctx context.Context, cfg *joinconfig.JoinConfiguration, rootfs string,
		skip []string, observe func(bootstatus.Event)) error {
		return join.Run(ctx, cfg, join.Options{Rootfs: rootfs, SkipPhases: skip, Out: os.Stdout,
			Observer: func(e join.Event) {
				ev := bootstatus.Event{Phase: e.Phase, State: e.State, Time: e.Time, Detail: e.Detail}
				if e.Err != nil {
					ev.Error = e.Err.Error()
				}
				observe(ev)
			}})
	}})
}
