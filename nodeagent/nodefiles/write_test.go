package nodefiles

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	root := Root(t.TempDir())
	files := []File{
		{Path: "/etc/kubernetes/pki/ca.crt", Data: []byte("ca"), Mode: 0o644},
		{Path: "/var/lib/kubelet/pki/kubelet-client-1.pem", Data: []byte("pem"), Mode: 0o600, Secret: true},
		{Path: KubeletClientCurrent, Link: "kubelet-client-1.pem"},
		{Path: KubeletConf, Data: []byte("conf"), Mode: 0o600, Secret: true},
	}
	old := umask(0o077)
	defer umask(old)
	if err := root.Write(files...); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"/etc/kubernetes/pki/ca.crt", 0o644, "ca"},
		{KubeletClientCurrent, 0o600, "pem"},
		{KubeletConf, 0o600, "conf"},
	}
	for _, tc := range cases {
		fi, err := os.Stat(root.Join(tc.path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s mode %04o, want %04o", tc.path, fi.Mode().Perm(), tc.mode)
		}
		if b, _ := root.Read(tc.path); string(b) != tc.data {
			t.Errorf("%s = %q", tc.path, b)
		}
	}
	// Rewriting replaces atomically and leaves no temporary files.
	if err := root.Write(File{Path: KubeletConf, Data: []byte("new"), Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	filepath.Walk(string(root), func(p string, fi os.FileInfo, err error) error {
		if strings.Contains(p, "pxejoin-tmp") {
			t.Errorf("left %s", p)
		}
		return nil
	})
	// A path cannot escape the root.
	if got := root.Join("/../../etc/passwd"); !strings.HasPrefix(got, string(root)) {
		t.Fatalf("Join escaped the root: %s", got)
	}
}

func TestWriteFailureKeepsOldFile(t *testing.T) {
	root := Root(t.TempDir())
	if err := root.Write(File{Path: "/a/conf", Data: []byte("old")}); err != nil {
		t.Fatal(err)
	}
	// A directory where the temporary file would go makes the write fail before the rename.
	os.Mkdir(root.Join("/a/.conf.pxejoin-tmp"), 0o755)
	os.WriteFile(root.Join("/a/.conf.pxejoin-tmp/x"), nil, 0o644)
	if err := root.Write(File{Path: "/a/conf", Data: []byte("new")}); err == nil {
		t.Fatal("write should fail")
	}
	if b, _ := root.Read("/a/conf"); string(b) != "old" {
		t.Fatalf("old file damaged: %q", b)
	}
}

func TestPrintWithholdsSecrets(t *testing.T) {
	var buf bytes.Buffer
	Print(&buf, File{Path: KubeletConf, Data: []byte("-----BEGIN EC PRIVATE KEY-----"), Mode: 0o600, Secret: true},
		File{Path: KubeletConfig, Data: []byte("kind: KubeletConfiguration\n")})
	if strings.Contains(buf.String(), "PRIVATE KEY") || !strings.Contains(buf.String(), "kind: KubeletConfiguration") {
		t.Fatal(buf.String())
	}
}
