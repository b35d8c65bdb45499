package vm

// PowerCycle pulls v's plug (qemu is killed: the guest gets no shutdown) and powers the same machine on
// again: a new qemu with v's options (same MAC, firmware, tap name), its console and files in dir so
// that the earlier boot's console stays where it was. The caller must Stop the returned VM.
func PowerCycle(v *VM, dir string) (*VM, error) {
	v.Stop()
	o := v.Opts
	o.Dir = dir
	return Start(o)
}
