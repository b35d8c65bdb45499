package controlplane

// PIDs are the running daemons' process IDs by name ("etcd", "kube-apiserver",
// "kube-controller-manager"), for measurements (CPU time, memory) from /proc.
func (cp *ControlPlane) PIDs() map[string]int {
	pids := map[string]int{}
	for _, p := range []*process{cp.etcd, cp.apiserver, cp.kcm} {
		if p != nil && p.running() {
			pids[p.name] = p.cmd.Process.Pid
		}
	}
	return pids
}
