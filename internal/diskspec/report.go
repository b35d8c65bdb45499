package diskspec

import "strings"

// What a persistent node's agent reports of its disk (phase disk done) and of its credentials
// (phase resume skipped), in words the boot server reads back: the agent writes its details with
// DiskDetail and ResumeSkipped, the boot server classifies them with DiskAction and ResumeClass.

// The disk phase's actions: the first word of its done detail.
const (
	DiskMounted   = "mounted"   // the disk already held pxejoin's state partition
	DiskInstalled = "installed" // the disk was blank: partitioned and formatted
	DiskWiped     = "wiped"     // the disk was erased (policy wipe or a re-image), then installed
)

// DiskDetail is the disk phase's done detail: the action, the disk and why.
func DiskDetail(action, dev, reason string) string { return action + " " + dev + ": " + reason }

// DiskAction is the action a disk done detail reports (DiskMounted, DiskInstalled, DiskWiped), ""
// if it names none.
func DiskAction(detail string) string {
	a, _, _ := strings.Cut(detail, " ")
	switch a {
	case DiskMounted, DiskInstalled, DiskWiped:
		return a
	}
	return ""
}

// Why a persistent node joins instead of resuming: the class its resume skipped detail starts with.
const (
	ResumeNoCredentials = "no credentials"                 // nothing on the disk: a new or blanked disk
	ResumeExpired       = "credentials expired"            // the client certificate expired or is about to
	ResumeOtherCluster  = "credentials of another cluster" // kubelet.conf's CA is not pxejoin.cahash's
	ResumeInvalid       = "credentials invalid"            // unreadable, incomplete or inconsistent files
	ResumeReimage       = "re-image"                       // pxejoin.reimage=1: join fresh
	ResumeNoJoin        = "join skipped"                   // pxejoin.join=skip
)

var resumeClasses = []string{ResumeNoCredentials, ResumeExpired, ResumeOtherCluster, ResumeInvalid, ResumeReimage, ResumeNoJoin}

// ResumeSkipped is a resume skipped detail: the class, then the agent's words.
func ResumeSkipped(class, why string) string { return class + ": " + why }

// ResumeClass is the class a resume skipped detail starts with, "" if none.
func ResumeClass(detail string) string {
	for _, c := range resumeClasses {
		if strings.HasPrefix(detail, c+":") {
			return c
		}
	}
	return ""
}
