#!/usr/bin/env bash
# Builds a node image profile: kernel + initramfs (nodeagent as /init) + root image (squashfs).
#
#   images/build.sh [OUT_LINK]        (make images; OUT_LINK defaults to images/out)
#
# Inputs (environment): NODEAGENT (default: ./nodeagent built here, static: it is the initramfs's /init),
# KUBELET (default $PXEJOIN_K8S_BIN/kubelet), K8S_BIN (default $PXEJOIN_K8S_BIN: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubeadm, for the control-plane images),
# KVER (default: the newest kernel in /lib/modules, from linux-image-amd64), MIRROR (default: the first
# deb.debian.org-style URI of /etc/apt/sources.list{,.d}), SUITE (bookworm), CACHE (/var/cache/pxejoin).
#
# Two cached stages, each in $CACHE/images/<sha256 of its inputs>/:
#   base-<hash>/root   debootstrap of images/packages.txt (slow: minutes; rebuilt only when the package
#                      list, mirror, suite or this script's base section change)
#   cp-<hash>/         the control-plane images as OCI archives (etcd, kube-apiserver, kube-controller-manager,
#                      kube-scheduler), tagged as kubeadm names them (rebuilt when a binary changes)
#   <hash>/            vmlinuz, initramfs.img, root.squashfs, cmdline, inputs.txt (the final image;
#                      a warm run with the same inputs only relinks OUT_LINK)
# Reproducibility: same package versions (pin them with a snapshot.debian.org MIRROR) and the same inputs
# give the same content; mksquashfs runs with -reproducible and a fixed -all-time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out_link=${1:-$here/out}
CACHE=${CACHE:-${PXEJOIN_CACHE:-/var/cache/pxejoin}}
SUITE=${SUITE:-bookworm}
NODEAGENT=${NODEAGENT:-}
K8S_BIN=${K8S_BIN:-${PXEJOIN_K8S_BIN:-$CACHE/k8s/v1.37.2}}
KUBELET=${KUBELET:-$K8S_BIN/kubelet}
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
need() { command -v "$1" >/dev/null || { echo "missing $1: run make deps" >&2; exit 1; }; }
need debootstrap; need mksquashfs; need sha256sum; need xz
[ -x "$KUBELET" ] || { echo "kubelet not found at $KUBELET: run make k8s" >&2; exit 1; }
cp_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler)
for b in "${cp_bins[@]}" kubeadm; do
  [ -x "$K8S_BIN/$b" ] || { echo "$b not found in $K8S_BIN: run make k8s" >&2; exit 1; }
done
[ -f "/boot/vmlinuz-$KVER" ] || { echo "no /boot/vmlinuz-$KVER: install linux-image-amd64" >&2; exit 1; }
mkdir -p "$CACHE/images"
# One build at a time (make lab and make test may run side by side).
exec 9>"$CACHE/images/.lock"
flock 9
if [ -z "$NODEAGENT" ]; then
  mkdir -p "$CACHE/images/agent"
  NODEAGENT=$CACHE/images/agent/nodeagent
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$NODEAGENT" ./nodeagent)
fi
[ -x "$NODEAGENT" ] || { echo "nodeagent not found at $NODEAGENT" >&2; exit 1; }
t0=$SECONDS

# --- stage 1: the Debian base (BASE-INPUTS: bump "base v1" when this section changes) ---
pkgs=$(grep -v '^#' "$here/packages.txt" | grep . | sort | paste -sd, -)
base_hash=$(printf 'base v1\n%s\n%s\n%s\n' "$SUITE" "$MIRROR" "$pkgs" | sha256sum | cut -c1-16)
base=$CACHE/images/base-$base_hash
if [ ! -f "$base/done" ]; then
  log "debootstrap $SUITE from $MIRROR ($pkgs) into $base"
  rm -rf "$base"; mkdir -p "$base"
  debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$base/root" "$MIRROR" > "$base/debootstrap.log" 2>&1 ||
    { tail -30 "$base/debootstrap.log" >&2; exit 1; }
  chroot "$base/root" apt-get clean
  rm -rf "$base/root"/var/lib/apt/lists/* "$base/root"/var/cache/apt/*.bin "$base/root"/var/log/*.log
  : > "$base/root/etc/machine-id"   # systemd creates a fresh one on every boot (diskless nodes)
  touch "$base/done"
  log "base done in $((SECONDS - t0)) s: $(du -sh "$base/root" | cut -f1)"
else
  log "base cached: $base"
fi

# --- stage 2: the control-plane images (no registry is reachable: the node image carries them) ---
# Named exactly as kubeadm's static Pod manifests name them (`kubeadm config images list`: the etcd tag is
# kubeadm v1.37's pin, 3.7.0-0, though the binary is etcd 3.7.3: same minor, the manifest's flags need >= 3.6).
# Each is the binary at /usr/local/bin (where the upstream images keep it), run as root like kubeadm's Pods.
k8s_version=v$("$K8S_BIN/kube-apiserver" --version | sed -n 's/^Kubernetes v//p')
cp_inputs=$(
  echo "cp-images v1 $k8s_version"
  (cd "$K8S_BIN" && sha256sum "${cp_bins[@]}")
  (cd "$repo" && sha256sum images/ociarchive/main.go)
)
cp_hash=$(echo "$cp_inputs" | sha256sum | cut -c1-16)
cp_images=$CACHE/images/cp-$cp_hash
if [ ! -f "$cp_images/done" ]; then
  log "control-plane images (${cp_bins[*]}) into $cp_images"
  rm -rf "$cp_images"; mkdir -p "$cp_images/archives"
  (cd "$repo" && CGO_ENABLED=0 go build -o "$cp_images/ociarchive" ./images/ociarchive)
  names=$("$K8S_BIN/kubeadm" config images list --kubernetes-version "$k8s_version")
  for b in "${cp_bins[@]}"; do
    name=$(echo "$names" | grep -E "/$b:" || true)
    [ -n "$name" ] || { echo "kubeadm config images list names no $b image" >&2; exit 1; }
    "$cp_images/ociarchive" -binary "$K8S_BIN/$b" -entry "/usr/local/bin/$b" -user 0:0 \
      -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -name "$name" -o "$cp_images/archives/$b.tar"
    echo "$name" >> "$cp_images/names.txt"
  done
  rm "$cp_images/ociarchive"
  echo "$cp_inputs" > "$cp_images/inputs.txt"
  touch "$cp_images/done"
  log "control-plane images done: $(du -sh "$cp_images/archives" | cut -f1)"
else
  log "control-plane images cached: $cp_images"
fi

# --- stage 3: the image ---
inputs=$(
  echo "base $base_hash"
  echo "kernel $KVER $(sha256sum "/boot/vmlinuz-$KVER" | cut -c1-16)"
  echo "kubelet $(sha256sum "$KUBELET" | cut -c1-16)"
  echo "nodeagent $(sha256sum "$NODEAGENT" | cut -c1-16)"
  echo "control-plane images $cp_hash"
  (cd "$repo" && find images/rootfs images/pause images/ociarchive initramfs images/build.sh -type f ! -name '*_test.go' | sort | xargs sha256sum)
)
hash=$(echo "$inputs" | sha256sum | cut -c1-16)
dest=$CACHE/images/$hash
if [ -f "$dest/done" ]; then
  log "image cached: $dest"
else
  rm -rf "$dest" "$dest.tmp"; mkdir -p "$dest.tmp"
  work=$dest.tmp/root
  log "assembling root in $work"
  cp -a "$base/root" "$work"
  cp -a "$here/rootfs/." "$work/"
  rm -rf "$work"/usr/share/doc/* "$work"/usr/share/man/* "$work"/usr/share/locale/* "$work"/usr/share/info/* \
    "$work/usr/lib/udev/hwdb.bin"
  # CNI plugins where add-ons expect them (see rootfs/etc/containerd/config.toml).
  mkdir -p "$work/opt/cni/bin"
  for plugin in "$work"/usr/lib/cni/*; do ln -sfn "/usr/lib/cni/${plugin##*/}" "$work/opt/cni/bin/${plugin##*/}"; done
  install -m 0755 "$KUBELET" "$work/usr/bin/kubelet"
  install -m 0755 "$NODEAGENT" "$work/usr/bin/nodeagent"
  # Kernel modules for containerd (overlay), CNI (bridge, veth) and the rest: the running kernel's.
  mkdir -p "$work/lib/modules"
  cp -a "/lib/modules/$KVER" "$work/lib/modules/"
  # Diskless nodes: the NIC drivers are loaded by the initramfs; leave out what no lab node uses.
  (cd "$work/lib/modules/$KVER/kernel" && rm -rf sound drivers/gpu drivers/media drivers/infiniband \
    drivers/usb drivers/iio drivers/hwmon drivers/net/wireless drivers/net/ethernet drivers/bluetooth \
    drivers/staging drivers/isdn drivers/mmc drivers/input drivers/hid net/wireless net/bluetooth)
  # The pause image (registry.k8s.io/pause cannot be pulled here): a static Go pause, as an OCI archive
  # that pause-import.service imports into containerd's k8s.io namespace before kubelet starts.
  mkdir -p "$work/usr/share/pxejoin"
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$dest.tmp/pause" ./images/pause &&
    go run ./images/ociarchive -binary "$dest.tmp/pause" -name registry.k8s.io/pause:3.10 \
      -o "$work/usr/share/pxejoin/pause.tar")
  # The control-plane images, imported only on a control-plane node (pxejoin-control-plane-images.service).
  cp -a "$cp_images/archives" "$work/usr/share/pxejoin/control-plane"
  chroot "$work" systemctl enable containerd.service kubelet.service pause-import.service pxejoin-control-plane.service \
    pxejoin-control-plane-images.service >/dev/null 2>&1
  chroot "$work" systemctl mask systemd-networkd.service systemd-resolved.service getty@tty1.service >/dev/null 2>&1 || true
  echo "pxejoin-node" > "$work/etc/hostname"
  # Keep the interface name the agent configured (eth0): renaming an UP link fails on 6.1 anyway.
  mkdir -p "$work/etc/systemd/network" && ln -sfn /dev/null "$work/etc/systemd/network/99-default.link"
  log "mksquashfs"
  env -u SOURCE_DATE_EPOCH mksquashfs "$work" "$dest.tmp/root.squashfs" -comp zstd -Xcompression-level 15 -noappend \
    -reproducible -all-time "$EPOCH" -quiet -no-progress >/dev/null
  cp "/boot/vmlinuz-$KVER" "$dest.tmp/vmlinuz"
  # xz (the command's default): within the 15 MB budget. initramfs/build_test.go's TestBudget runs this
  # very line: change them together.
  log "initramfs"
  (cd "$repo" && go run ./initramfs/cmd/initramfs -agent "$NODEAGENT" -kernel-version "$KVER" -o "$dest.tmp/initramfs.img")
  echo "console=ttyS0 quiet" > "$dest.tmp/cmdline"
  echo "$inputs" > "$dest.tmp/inputs.txt"
  rm -rf "$work" "$dest.tmp/pause"
  mv "$dest.tmp" "$dest"; touch "$dest/done"
fi
ln -sfn "$dest" "$out_link"
# Keep the 4 newest images (each ~190 MB) and the 2 newest control-plane image sets; bases stay.
find "$CACHE/images" -maxdepth 1 -regextype egrep -regex '.*/cp-[0-9a-f]{16}' -printf '%T@ %p\n' |
  sort -rn | tail -n +3 | cut -d' ' -f2 | xargs -r rm -rf
find "$CACHE/images" -maxdepth 1 -regextype egrep -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' |
  sort -rn | tail -n +5 | cut -d' ' -f2 | xargs -r rm -rf
log "image $hash ready in $((SECONDS - t0)) s:"
ls -l "$dest"/vmlinuz "$dest"/initramfs.img "$dest"/root.squashfs >&2
