// Package diskspec is a persistent profile's disk as it travels from the boot server (a profile's
// `disk:` in the configuration or a Machine) to the node agent (the kernel command line): which disk,
// and what the agent may do to it.
package diskspec

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Policy says what the agent may do to the named disk.
type Policy string

const (
	// PolicyInstall (the default): the first boot partitions and formats the disk only when it is
	// blank (no partition table, no filesystem signature) or already holds pxejoin's partition. A
	// disk with anything else on it is reported and never written.
	PolicyInstall Policy = "install"
	// PolicyWipe: the operator says the named disk may be wiped even when it holds other data.
	PolicyWipe Policy = "wipe"
)

// PartLabel is the GPT partition name of pxejoin's state partition; FSLabel its filesystem label.
// A disk whose partition carries PartLabel is "already pxejoin's".
const (
	PartLabel = "pxejoin-state"
	FSLabel   = "pxejoin"
)

// Kernel command line keys the boot server writes and the agent reads.
const (
	// KeyDisk is the disk's stable path (/dev/disk/by-path/…, /dev/disk/by-id/…) or "auto" for the
	// first disk of at least KeyMinSize GiB. Absent: the machine is diskless.
	KeyDisk = "pxejoin.disk"
	// KeyMinSize is the smallest size in GiB the disk may have (with a path too: a smaller disk is
	// reported, not used).
	KeyMinSize = "pxejoin.disk.minsize"
	// KeyPolicy is the Policy.
	KeyPolicy = "pxejoin.disk.policy"
	// KeyReimage=1: this boot wipes the disk (whatever the policy) and joins fresh. The boot server
	// writes it after `bootserver reimage` until the agent reports the disk installed.
	KeyReimage = "pxejoin.reimage"
	// KeyCAHash is the cluster CA's pins (sha256:<hex>, comma-separated): credentials on the disk
	// resume only when their CA matches one (otherwise they belong to another cluster).
	KeyCAHash = "pxejoin.cahash"
)

// Auto is KeyDisk's value for "the first disk of at least MinSizeGiB".
const Auto = "auto"

// Spec is a persistent profile's disk.
type Spec struct {
	// Path is a stable device path under /dev/disk/ (by-path, by-id); empty: the first disk, in the
	// kernel's order, of at least MinSizeGiB that is not removable.
	Path string `yaml:"path,omitempty" json:"path,omitempty"`
	// MinSizeGiB is the smallest acceptable size (required without Path).
	MinSizeGiB int `yaml:"minSizeGiB,omitempty" json:"minSizeGiB,omitempty"`
	// Policy is what the agent may do to the disk (default install).
	Policy Policy `yaml:"policy,omitempty" json:"policy,omitempty"`
}

// Validate checks s as the configuration gives it.
func (s Spec) Validate() error {
	switch {
	case s.Path == "" && s.MinSizeGiB <= 0:
		return errors.New("a disk needs path (a /dev/disk/by-path/… or by-id/… name) or minSizeGiB (the first disk at least that large)")
	case s.Path != "" && !strings.HasPrefix(s.Path, "/dev/disk/by-"):
		return fmt.Errorf("path %q is not a stable name: use /dev/disk/by-path/… or /dev/disk/by-id/… (names like /dev/sda change between boots)", s.Path)
	case strings.ContainsAny(s.Path, " \t\"\n"):
		return fmt.Errorf("path %q has a space or quote, which the kernel command line cannot carry", s.Path)
	case s.MinSizeGiB < 0:
		return errors.New("minSizeGiB must not be negative")
	}
	switch s.Policy {
	case "", PolicyInstall, PolicyWipe:
	default:
		return fmt.Errorf("policy %q: use install (only a blank or pxejoin disk is written) or wipe (the disk may be wiped)", s.Policy)
	}
	return nil
}

// EffectivePolicy is s.Policy with its default.
func (s Spec) EffectivePolicy() Policy {
	if s.Policy == "" {
		return PolicyInstall
	}
	return s.Policy
}

// Params are s as kernel command line parameters (key=value).
func (s Spec) Params() []string {
	disk := s.Path
	if disk == "" {
		disk = Auto
	}
	p := []string{KeyDisk + "=" + disk}
	if s.MinSizeGiB > 0 {
		p = append(p, KeyMinSize+"="+strconv.Itoa(s.MinSizeGiB))
	}
	return append(p, KeyPolicy+"="+string(s.EffectivePolicy()))
}

// Set sets the field of key from a command line parameter. It reports whether key is one of Spec's
// (KeyReimage and KeyCAHash are not: the agent keeps them beside the Spec).
func (s *Spec) Set(key, value string) (bool, error) {
	switch key {
	case KeyDisk:
		if value == Auto {
			value = ""
		}
		s.Path = value
	case KeyMinSize:
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 {
			return true, fmt.Errorf("%s=%q is not a size in GiB", key, value)
		}
		s.MinSizeGiB = n
	case KeyPolicy:
		s.Policy = Policy(value)
	default:
		return false, nil
	}
	return true, nil
}
