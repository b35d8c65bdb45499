package cli

import (
	"context"
	"os"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/joinconfig"
	"github.com/pxejoin/pxejoin/nodeagent/join"
)

// InitJoin is the join the initramfs's /init runs: the same engine as `nodeagent join`, writing into
// the node's root and reporting every phase transition as a boot-status event.
func InitJoin(ctx context.Context, cfg *joinconfig.JoinConfiguration, rootfs string, skip []string, observe func(bootstatus.Event)) error {
	return join.Run(ctx, cfg, join.Options{Rootfs: rootfs, SkipPhases: skip, Out: os.Stdout, RegisterNode: true,
		Observer: func(e join.Event) {
			ev := bootstatus.Event{Phase: e.Phase, State: e.State, Time: e.Time, Detail: e.Detail}
			if e.Err != nil {
				ev.Error = e.Err.Error()
			}
			observe(ev)
		}})
}
