package status

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pxejoin/pxejoin/internal/bootstatus"
	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// openStore opens a store over a new database at path; the test's cleanup closes both.
func openStoreAt(t *testing.T, path string) *Store {
	t.Helper()
	db := openDB(t, path)
	t.Cleanup(func() { db.Close() })
	s, err := Open(db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func agentEvent(phase, state, detail string) Event {
	return Event{Event: bootstatus.Event{Phase: phase, State: state, Detail: detail}, Source: SourceAgent}
}

func scriptEvent() Event {
	return Event{Event: bootstatus.Event{Phase: PhaseScript, State: bootstatus.StateDone}, Source: SourceHTTP, StartsBoot: true}
}

// TestRejoin: a join file is a re-join only for a machine installed in an earlier boot (or wiped
// on request in this one), counted once per boot, with the agent's reason classified.
func TestRejoin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		boot1  []Event // the install's boot
		boot2  []Event // nil: the join is in boot 1
		reason string  // "": not a re-join
	}{
		{"diskless", nil, []Event{agentEvent(bootstatus.PhaseJoin, "done", "")}, ""},
		{"first install", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda"), agentEvent(bootstatus.PhaseResume, "skipped", diskspec.ResumeSkipped(diskspec.ResumeNoCredentials, "no /etc/kubernetes/kubelet.conf on the disk: joining (first boot)"))}, nil, ""},
		{"expired", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda")},
			[]Event{agentEvent(bootstatus.PhaseDisk, "done", "mounted /dev/vda"), agentEvent(bootstatus.PhaseResume, "skipped", diskspec.ResumeSkipped(diskspec.ResumeExpired, "the kubelet's client certificate expired at 2026-11-30T11:00:00Z: joining again"))}, RejoinExpired},
		{"CA differs", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda")},
			[]Event{agentEvent(bootstatus.PhaseResume, "skipped", diskspec.ResumeSkipped(diskspec.ResumeOtherCluster, "credentials belong to another cluster (CA sha256:ab is not this cluster's): joining again"))}, RejoinCAChanged},
		{"disk replaced", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda")},
			[]Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vdb"), agentEvent(bootstatus.PhaseResume, "skipped", diskspec.ResumeSkipped(diskspec.ResumeNoCredentials, "no /etc/kubernetes/kubelet.conf on the disk: joining (first boot)"))}, RejoinDiskReplaced},
		{"reimage", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda")},
			[]Event{agentEvent(bootstatus.PhaseDisk, "done", diskspec.DiskDetail(diskspec.DiskWiped, "/dev/vda", "/dev/vda held ext4; re-image asked (pxejoin.reimage=1)"))}, RejoinReimage},
		{"not reported", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda")}, []Event{}, RejoinNotResumed},
		{"other", []Event{agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda")},
			[]Event{agentEvent(bootstatus.PhaseResume, "skipped", diskspec.ResumeSkipped(diskspec.ResumeInvalid, "/etc/kubernetes/kubelet.conf on the disk is unreadable (EOF): joining again"))}, RejoinOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStoreAt(t, filepath.Join(t.TempDir(), "s.db"))
			mac := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 1}
			s.RecordAs(mac, nil, append([]Event{scriptEvent()}, tc.boot1...)...)
			if tc.boot2 != nil {
				s.RecordAs(mac, nil, append([]Event{scriptEvent()}, tc.boot2...)...)
			}
			reason, ok := s.Rejoin(mac)
			if reason != tc.reason || ok != (tc.reason != "") {
				t.Fatalf("Rejoin = %q, %v; want %q", reason, ok, tc.reason)
			}
			if _, again := s.Rejoin(mac); again {
				t.Error("a second join file of the same boot counted again")
			}
		})
	}
}

// TestInstallDurable: the install record and a pending re-image survive a restart, and an
// installed machine resumes unless a re-image is pending.
func TestInstallDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	mac := hwaddr.MAC{0x52, 0x54, 0, 0, 0, 2}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	// No background writes: what is on disk after the "crash" was written synchronously.
	s, err := Open(db, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if s.Resumes(mac, "") {
		t.Error("a machine never seen resumes")
	}
	if _, err := s.RecordSync(mac, scriptEvent(), agentEvent(bootstatus.PhaseDisk, "done", "installed /dev/vda"), agentEvent(bootstatus.PhaseResume, "done", "")); err != nil {
		t.Fatal(err)
	}
	if !s.Resumes(mac, "") || s.Resumes(mac, "from-the-inventory") {
		t.Error("an installed machine resumes unless a re-image is pending")
	}
	if err := s.RequestReimage(mac, Identity{NodeName: "db-2", Known: true}, "req-1"); err != nil {
		t.Fatal(err)
	}
	// kill -9: no Close, no flush; the request and the install were written synchronously.
	db.Close()
	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s2, err := Open(db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	m, _ := s2.Get(mac)
	if !m.Install.Installed || m.Install.LastResume.IsZero() || m.Install.Reimage != "req-1" || s2.Resumes(mac, "") {
		t.Fatalf("after a restart: %+v", m.Install)
	}
	if req, err := s2.ReimageForScript(mac, ""); err != nil || req != "req-1" {
		t.Fatalf("ReimageForScript = %q, %v", req, err)
	}
}
