package config

import "os"

// InCluster reports whether the boot server runs in a Kubernetes pod (the kubelet sets
// KUBERNETES_SERVICE_HOST in every container). There, without cluster.kubeconfig, the boot server
// uses its pod's ServiceAccount.
func InCluster() bool { return os.Getenv("KUBERNETES_SERVICE_HOST") != "" }

// UsesCluster reports whether the boot server connects to a cluster: a kubeconfig is configured, or
// it runs in a pod.
func (c *Config) UsesCluster() bool { return c.Cluster.Kubeconfig != "" || InCluster() }
