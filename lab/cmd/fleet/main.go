// Command fleet is make bench-fleet: N simulated machines PXE-boot through the real boot server and
// join a real control plane at once, beside a control-plane-only reference (lab/fleet).
//
//	fleet [-n 1000] [-ha [-capacity 6000] [-inflight 32]] [-inventory file|kubernetes|both] [-bootserver bin/bootserver] [-keep DIR] [-no-reference] [-max-joins 100]
//
// FLEET_N sets -n's default. Needs root (network namespaces) and make deps / make k8s.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/pxejoin/pxejoin/lab/fleet"
)

func main() {
	n := 1000
	if v := os.Getenv("FLEET_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			log.Fatalf("FLEET_N=%q is not a number", v)
		}
	}
	flag.IntVar(&n, "n", n, "machines that boot at once (FLEET_N)")
	bin := flag.String("bootserver", "bin/bootserver", "the boot server binary (make build)")
	keep := flag.String("keep", "", "work in this directory and keep it (logs, configurations, the machines' roots)")
	noRef := flag.Bool("no-reference", false, "skip the control-plane-only reference run")
	maxJoins := flag.Int("max-joins", 100, "agent joins running at once in this process (both runs)")
	ha := flag.Bool("ha", false, "the HA DHCP benchmark instead: unknown machines through one boot server and through two (dhcp.ha), each in a closed loop (capacity) and N at once (burst), and N with one of two killed (half of those machines with a reserved or claimed address)")
	capacity := flag.Int("capacity", 6000, "with -ha: machines of each closed-loop capacity run (one server, two)")
	inFlight := flag.Int("inflight", 32, "with -ha: machines in flight in a capacity run; lower it if the report shows retransmits")
	inventory := flag.String("inventory", fleet.InventoryFile, "the boot server's inventory: file (its YAML), kubernetes (N Machine resources) or both (one run each)")
	flag.Parse()
	dir := *keep
	cleanup := func() {}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "pxejoin-fleet-"); err != nil {
			log.Fatal(err)
		}
		cleanup = func() { os.RemoveAll(dir) }
	}
	defer cleanup()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *ha {
		res, err := fleet.RunHA(ctx, fleet.HABenchOptions{Options: fleet.Options{N: n, Bootserver: *bin, Dir: dir, Logf: log.Printf}, InFlight: *inFlight, Capacity: *capacity})
		if err != nil {
			log.Print(err)
			cleanup()
			os.Exit(1)
		}
		fmt.Print(res)
		return
	}
	res, err := fleet.Run(ctx, fleet.Options{N: n, Bootserver: *bin, Dir: dir, NoReference: *noRef, MaxJoins: *maxJoins, Inventory: *inventory, Logf: log.Printf})
	if err != nil {
		log.Print(err)
		cleanup()
		os.Exit(1)
	}
	fmt.Print(res)
	if res.Fleet.Failed > 0 || (res.Reference != nil && res.Reference.Failed > 0) || (res.CRD != nil && res.CRD.Stats.Failed > 0) {
		cleanup()
		os.Exit(1)
	}
}
