#!/bin/bash
# images/bootserver.sh OUT.tar [NAME]: the boot server's container image as an OCI archive, built
# without a registry (as the node image's pause image is): the static bootserver as its entrypoint and
# Debian's iPXE binaries at /usr/lib/ipxe (tftp.root's default), run as root with only the
# capabilities deploy/segment/daemonset.yaml adds. Load it on a node with
#   ctr -n k8s.io images import OUT.tar
# NAME defaults to pxejoin.io/bootserver:dev, the image deploy/segment names.
set -euo pipefail
out=${1:?usage: images/bootserver.sh OUT.tar [NAME]}
name=${2:-pxejoin.io/bootserver:dev}
repo=$(cd "$(dirname "$0")/.." && pwd)
case $out in /*) ;; *) out=$PWD/$out ;; esac
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
files=()
for f in undionly.kpxe ipxe.efi snponly.efi; do
  [ -e "/usr/lib/ipxe/$f" ] || { echo "images/bootserver.sh: /usr/lib/ipxe/$f missing: run make deps (Debian's ipxe)" >&2; exit 1; }
  files+=(-file "/usr/lib/ipxe/$f=/usr/lib/ipxe/$f")
done
cd "$repo"
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$tmp/bootserver" ./bootserver
go run ./images/ociarchive -binary "$tmp/bootserver" -name "$name" -user 0:0 "${files[@]}" -o "$out"
echo "$out: $name"
