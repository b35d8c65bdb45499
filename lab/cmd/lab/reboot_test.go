package main

import (
	"context"
	"strings"
	"testing"

	"github.com/pxejoin/pxejoin/lab/vm"
)

// TestRebootUnknownNode: lab reboot of a node the lab does not have reaches the supervisor's socket
// and fails with the names it has, touching no VM.
func TestRebootUnknownNode(t *testing.T) {
	dir := t.TempDir()
	r := &rebooter{vms: map[string]*vm.VM{"node-1": nil, "node-2": nil}}
	stop, err := r.serve(context.Background(), dir+"/"+controlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	err = reboot(dir, "node-9")
	if err == nil || !strings.Contains(err.Error(), "node-9") {
		t.Fatalf("reboot node-9: %v, want a failure naming it", err)
	}
}
