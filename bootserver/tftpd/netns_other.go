//go:build !linux

package tftpd

import "syscall"

// inSocketNetns runs f: network namespaces are Linux's.
func inSocketNetns(_ syscall.Conn, f func() error) error { return f() }
