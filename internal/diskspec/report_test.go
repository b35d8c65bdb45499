package diskspec

import "testing"

func TestReportWords(t *testing.T) {
	for _, tc := range []struct{ detail, action string }{
		{DiskDetail(DiskInstalled, "/dev/vda", "/dev/vda was blank"), DiskInstalled},
		{DiskDetail(DiskWiped, "/dev/vda", "re-image asked"), DiskWiped},
		{DiskDetail(DiskMounted, "/dev/vda", "holds pxejoin's partition"), DiskMounted},
		{"already mounted", ""},
		{"installedx /dev/vda", ""},
	} {
		if got := DiskAction(tc.detail); got != tc.action {
			t.Errorf("DiskAction(%q) = %q, want %q", tc.detail, got, tc.action)
		}
	}
	for _, tc := range []struct{ detail, class string }{
		{ResumeSkipped(ResumeExpired, "the kubelet's client certificate expired at …"), ResumeExpired},
		{ResumeSkipped(ResumeOtherCluster, "credentials belong to another cluster (CA sha256:… is not this cluster's)"), ResumeOtherCluster},
		{ResumeSkipped(ResumeNoCredentials, "no /etc/kubernetes/kubelet.conf on the disk"), ResumeNoCredentials},
		{"pxejoin.cahash: bad pin", ""},
		{"credentials expired", ""}, // a class without its reason is not the agent's
	} {
		if got := ResumeClass(tc.detail); got != tc.class {
			t.Errorf("ResumeClass(%q) = %q, want %q", tc.detail, got, tc.class)
		}
	}
}
