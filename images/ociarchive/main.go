// Command ociarchive packs a static binary (and, optionally, a few more files) as a single-layer OCI
// image archive (an image layout in a tar) that `ctr images import` reads: the pause image of the node
// root images, and the boot server's image (images/bootserver.sh).
//
//	go run ./images/ociarchive -binary pause -name registry.k8s.io/pause:3.10 -o pause.tar
//	go run ./images/ociarchive -binary bootserver -name pxejoin.io/bootserver:dev -user 0:0 \
//	    -file /usr/lib/ipxe/undionly.kpxe=/usr/lib/ipxe/undionly.kpxe -o bootserver.tar
//	go run ./images/ociarchive -binary kube-apiserver -entry /usr/local/bin/kube-apiserver -user 0:0 \
//	    -env PATH=/usr/local/bin:/usr/bin:/bin -name registry.k8s.io/kube-apiserver:v1.37.2 -o kube-apiserver.tar
//
// The output is reproducible: fixed timestamps, owners and order.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// fileFlags collects -file SRC=DEST.
type fileFlags []File

func (f *fileFlags) String() string { return fmt.Sprint(*f) }

func (f *fileFlags) Set(v string) error {
	src, dest, ok := strings.Cut(v, "=")
	if !ok || src == "" || !path.IsAbs(dest) {
		return fmt.Errorf("%q is not SRC=/absolute/dest", v)
	}
	b, err := os.ReadFile(src) // follows symlinks: the image holds the file itself
	if err != nil {
		return err
	}
	*f = append(*f, File{Path: dest, Mode: 0o644, Data: b})
	return nil
}

// envFlags collects -env KEY=VALUE.
type envFlags []string

func (e *envFlags) String() string { return fmt.Sprint(*e) }

func (e *envFlags) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}

func main() {
	bin := flag.String("binary", "", "static binary to pack (the entrypoint, at -entry)")
	entry := flag.String("entry", "", "absolute path of the binary in the image (default /<its name>)")
	name := flag.String("name", "", "image name, e.g. registry.k8s.io/pause:3.10")
	user := flag.String("user", "65535:65535", "uid:gid the entrypoint runs as")
	var files fileFlags
	flag.Var(&files, "file", "SRC=DEST: also pack file SRC at DEST (mode 0644); repeatable")
	var env envFlags
	flag.Var(&env, "env", "KEY=VALUE in the image's environment (a static Pod's command is looked up in its PATH); repeatable")
	out := flag.String("o", "image.tar", "output OCI archive")
	flag.Parse()
	b, err := os.ReadFile(*bin)
	if err == nil {
		var f *os.File
		if f, err = os.Create(*out); err == nil {
			if *entry == "" {
				*entry = "/" + path.Base(*bin)
			}
			err = WriteImage(f, Image{Name: *name, Entrypoint: *entry, User: *user, Env: env,
				Files: append([]File{{Path: *entry, Mode: 0o755, Data: b}}, files...)})
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ociarchive:", err)
		os.Exit(1)
	}
}

// epoch is every timestamp in the archive (reproducible builds).
var epoch = time.Unix(0, 0).UTC()

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// Image is what an archive holds: one image, one layer.
type Image struct {
	Name       string   // with a tag, e.g. registry.k8s.io/pause:3.10
	Entrypoint string   // absolute path of the binary run
	User       string   // uid:gid
	Env        []string // KEY=VALUE; none: containerd's default
	Files      []File   // the layer's regular files; their directories are made 0755
}

// File is one regular file of the layer.
type File struct {
	Path string // absolute
	Mode int64
	Data []byte
}

// imageConfig is the image configuration's config object.
func imageConfig(img Image) map[string]any {
	c := map[string]any{"Entrypoint": []string{img.Entrypoint}, "User": img.User}
	if len(img.Env) > 0 {
		c["Env"] = img.Env
	}
	return c
}

// Write writes an OCI image-layout tar holding one image named name whose only file is entry (mode
// 0755) with content bin, also its entrypoint, run as 65535:65535.
func Write(w io.Writer, name, entry string, bin []byte) error {
	return WriteImage(w, Image{Name: name, Entrypoint: entry, User: "65535:65535", Files: []File{{Path: entry, Mode: 0o755, Data: bin}}})
}

// WriteImage writes an OCI image-layout tar holding img.
func WriteImage(w io.Writer, img Image) error {
	name := img.Name
	if name == "" || !strings.Contains(name, ":") {
		return fmt.Errorf("image name %q needs a tag", name)
	}
	// The layer: a tar with the files (and their directories, parents first), gzip-compressed.
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	dirs := map[string]bool{}
	var names []string
	for _, f := range img.Files {
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch,
			Typeflag: tar.TypeDir, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	files := append([]File(nil), img.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(f.Path, "/"), Mode: f.Mode, Size: int64(len(f.Data)),
			ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	var layer bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&layer, gzip.BestCompression)
	gz.ModTime = epoch
	if _, err := gz.Write(layerTar.Bytes()); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config":       imageConfig(img),
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest(layerTar.Bytes())}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: int64(len(config))},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: digest(layer.Bytes()), Size: int64(layer.Len())}},
	})
	if err != nil {
		return err
	}
	tag := name[strings.LastIndex(name, ":")+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest(manifest),
			Size: int64(len(manifest)), Platform: &platform{Architecture: "amd64", OS: "linux"},
			Annotations: map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}},
	})
	if err != nil {
		return err
	}
	out := tar.NewWriter(w)
	add := func(p string, b []byte) error {
		if err := out.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(b)), ModTime: epoch,
			Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := out.Write(b)
		return err
	}
	for _, f := range []struct {
		p string
		b []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(digest(manifest), "sha256:"), manifest},
		{"blobs/sha256/" + strings.TrimPrefix(digest(config), "sha256:"), config},
		{"blobs/sha256/" + strings.TrimPrefix(digest(layer.Bytes()), "sha256:"), layer.Bytes()},
	} {
		if err := add(f.p, f.b); err != nil {
			return err
		}
	}
	return out.Close()
}
