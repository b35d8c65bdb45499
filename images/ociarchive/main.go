// Command ociarchive packs one static binary as a single-layer OCI image archive (an image layout in a
// tar) that `ctr images import` reads: the pause image of the node root images.
//
//	go run ./images/ociarchive -binary pause -name registry.k8s.io/pause:3.10 -o pause.tar
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
	"strings"
	"time"
)

func main() {
	bin := flag.String("binary", "", "static binary to pack (the entrypoint)")
	name := flag.String("name", "", "image name, e.g. registry.k8s.io/pause:3.10")
	out := flag.String("o", "image.tar", "output OCI archive")
	flag.Parse()
	b, err := os.ReadFile(*bin)
	if err == nil {
		var f *os.File
		if f, err = os.Create(*out); err == nil {
			err = Write(f, *name, "/"+path.Base(*bin), b)
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

// Write writes an OCI image-layout tar holding one image named name whose only file is entry (mode
// 0755) with content bin, also its entrypoint.
func Write(w io.Writer, name, entry string, bin []byte) error {
	if name == "" || !strings.Contains(name, ":") {
		return fmt.Errorf("image name %q needs a tag", name)
	}
	// The layer: a tar with the binary, gzip-compressed.
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(entry, "/"), Mode: 0o755, Size: int64(len(bin)),
		ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(bin); err != nil {
		return err
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
		"config":       map[string]any{"Entrypoint": []string{entry}, "User": "65535:65535"},
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
