package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestWrite checks the layout: every blob named by its digest, the index naming the image, the
// manifest pointing at config and layer, and the same bytes on a second run.
func TestWrite(t *testing.T) {
	var a, b bytes.Buffer
	if err := Write(&a, "registry.k8s.io/pause:3.10", "/pause", []byte("binary")); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, "registry.k8s.io/pause:3.10", "/pause", []byte("binary")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two runs differ: not reproducible")
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&a)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		c, _ := io.ReadAll(tr)
		files[h.Name] = c
		if rest, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok && digest(c) != "sha256:"+rest {
			t.Errorf("%s: content digest %s", h.Name, digest(c))
		}
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	if n := index.Manifests[0].Annotations["io.containerd.image.name"]; n != "registry.k8s.io/pause:3.10" {
		t.Errorf("image name %q", n)
	}
	var m struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(index.Manifests[0].Digest, "sha256:")], &m); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(m.Layers, m.Config) {
		if _, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]; !ok {
			t.Errorf("blob %s missing", d.Digest)
		}
	}
	if err := Write(io.Discard, "no-tag", "/pause", nil); err == nil {
		t.Error("a name without a tag was accepted")
	}
}

// TestWriteImage: an image with more files than its binary (the boot server's, with iPXE) holds each
// file and its directories in its layer, parents before children, and runs as the user asked for.
func TestWriteImage(t *testing.T) {
	var buf bytes.Buffer
	img := Image{Name: "pxejoin.io/bootserver:dev", Entrypoint: "/bootserver", User: "0:0", Env: []string{"PATH=/usr/local/bin:/bin"}, Files: []File{
		{Path: "/usr/lib/ipxe/undionly.kpxe", Mode: 0o644, Data: []byte("undi")},
		{Path: "/bootserver", Mode: 0o755, Data: []byte("binary")},
		{Path: "/usr/lib/ipxe/ipxe.efi", Mode: 0o644, Data: []byte("efi")},
	}}
	if err := WriteImage(&buf, img); err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	var index struct{ Manifests []descriptor }
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	var config struct {
		Config struct {
			Entrypoint []string
			User       string
			Env        []string
		}
	}
	blob := func(d string) []byte { return files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v", err)
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "0:0" || len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/bootserver" ||
		len(config.Config.Env) != 1 || config.Config.Env[0] != "PATH=/usr/local/bin:/bin" {
		t.Errorf("config %+v", config.Config)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, fmt.Sprintf("%s %o", h.Name, h.Mode))
	}
	want := []string{"usr/ 755", "usr/lib/ 755", "usr/lib/ipxe/ 755", "bootserver 755", "usr/lib/ipxe/ipxe.efi 644", "usr/lib/ipxe/undionly.kpxe 644"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("layer holds %q, want %q", order, want)
	}
}

func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		c, _ := io.ReadAll(tr)
		files[h.Name] = c
	}
}
