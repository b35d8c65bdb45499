#!/usr/bin/env bash
# Installs the Debian packages pxejoin's tests and lab need (Debian 12, as root). Idempotent and quiet
# when everything is already there. Services that packages try to start are kept from starting: the
# tests run their own instances inside their own state directories and network namespaces.
set -euo pipefail
pkgs=(
  etcd-server etcd-client            # the control plane's store (tests run their own instance)
  iproute2 iputils-ping              # network namespaces and veth pairs for the tests
  isc-dhcp-client busybox            # real DHCP clients for the boot server tests
  atftp                              # a real TFTP client
  dnsmasq-base nginx-light           # reference servers for the benchmarks, run inside namespaces only
  nghttp2-client                     # h2load, the HTTP benchmark client
  qemu-system-x86 ipxe-qemu ipxe ovmf linux-image-amd64   # the PXE lab
  squashfs-tools debootstrap cpio zstd xz-utils           # images
  fdisk util-linux e2fsprogs         # sfdisk, wipefs, mkfs.ext4: the initramfs carries them for persistent disks
  openssl curl ca-certificates
  vagrant vagrant-libvirt            # `vagrant validate` of the libvirt lab in make test
  chromium                           # headless, loads the status page in make test
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
# Keep package scripts from starting etcd, nginx and friends as host services.
prc=/usr/sbin/policy-rc.d
had_prc=0; [ -e "$prc" ] && had_prc=1
if [ $had_prc -eq 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$prc"; chmod +x "$prc"; fi
trap '[ $had_prc -eq 0 ] && rm -f "$prc"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
