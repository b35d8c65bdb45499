package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
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
