package server

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestRootLinks: a top-level link out of the TFTP root (Debian's ipxe.efi → /boot/ipxe.efi) is served
// as the file it names; dangling links and links to directories are not.
func TestRootLinks(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(outside, "ipxe.efi"), []byte("efi"), 0o644)
	os.WriteFile(filepath.Join(root, "undionly.kpxe"), []byte("bios"), 0o644)
	os.Symlink(filepath.Join(outside, "ipxe.efi"), filepath.Join(root, "ipxe.efi"))
	os.Symlink(filepath.Join(outside, "gone"), filepath.Join(root, "dangling.efi"))
	os.Symlink(outside, filepath.Join(root, "dir"))
	files, err := rootLinks(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files["ipxe.efi"] == nil {
		t.Fatalf("served links: %v", files)
	}
	rc, size, err := files["ipxe.efi"](context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	if string(b) != "efi" || size != 3 {
		t.Fatalf("got %q (%d)", b, size)
	}
}
