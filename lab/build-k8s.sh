#!/usr/bin/env bash
# Builds the Kubernetes and etcd commands the tests and the lab need from the Go module proxy, cached by
# version. Usage: lab/build-k8s.sh OUTDIR [K8S_VERSION [ETCD_VERSION]] ; binaries land in OUTDIR/<k8s version>/.
# Only what is missing (or an etcd of another version) is built; with everything there it prints "cached".
# How and why: ../shared/notes/control-plane.md (wrapper modules that replace the staging modules).
set -euo pipefail
out=${1:?usage: build-k8s.sh OUTDIR [K8S_VERSION [ETCD_VERSION]]}
ver=${2:-v1.37.2}
ever=${3:-v3.7.3}
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kubeadm)
dest="$out/$ver"
missing=()
for c in "${cmds[@]}"; do [ -x "$dest/$c" ] || missing+=("$c"); done
# etcd and etcdctl share the Kubernetes version's directory, so they are checked by their own version.
emissing=()
[ -x "$dest/etcd" ] && "$dest/etcd" --version 2>/dev/null | grep -qx "etcd Version: ${ever#v}" || emissing+=(etcd)
[ -x "$dest/etcdctl" ] && "$dest/etcdctl" version 2>/dev/null | grep -qx "etcdctl version: ${ever#v}" || emissing+=(etcdctl)
[ ${#missing[@]} -eq 0 ] && [ ${#emissing[@]} -eq 0 ] && { echo "k8s $ver, etcd $ever: cached in $dest"; exit 0; }
mkdir -p "$dest"

build_k8s() {
  local work="$out/.wrapper-$ver" minor stag gomod p c ld pkgs=()
  mkdir -p "$work"
  minor=${ver#v1.}; minor=${minor%%.*}
  stag="v0.${ver#v1.}"
  gomod=$(go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || { echo "cannot find go.mod of k8s.io/kubernetes@$ver" >&2; exit 1; }
  {
    echo "module pxejoin.local/k8sbuild"
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo "require k8s.io/kubernetes $ver"
    awk '/=> \.\/staging\/src\// {print "replace " $1 " => " $1 " '"$stag"'"}' "$gomod"
  } > "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n' > "$work/tools.go"
  for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$work" && GOFLAGS=-mod=mod go get "${pkgs[@]}")
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for c in "${missing[@]}"; do
    echo "building $c $ver" >&2
    (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$dest/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$dest/$c.tmp" "$dest/$c"
  done
}

# etcd's server and etcdctl modules carry replace directives, so `go install` refuses them; a wrapper
# module that requires them builds them. Their version is a constant in go.etcd.io/etcd/api, no -X needed.
build_etcd() {
  local work="$out/.etcd-wrapper-$ever" c
  declare -A pkg=([etcd]=go.etcd.io/etcd/server/v3 [etcdctl]=go.etcd.io/etcd/etcdctl/v3)
  mkdir -p "$work"
  printf 'module pxejoin.local/etcdbuild\n\ngo 1.26\n' > "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n' > "$work/tools.go"
  (cd "$work" && GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$ever" "go.etcd.io/etcd/etcdctl/v3@$ever")
  for c in "${emissing[@]}"; do
    echo "building $c $ever" >&2
    (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$dest/$c.tmp" "${pkg[$c]}")
    mv "$dest/$c.tmp" "$dest/$c"
  done
}

[ ${#missing[@]} -eq 0 ] || build_k8s
[ ${#emissing[@]} -eq 0 ] || build_etcd
echo "k8s $ver, etcd $ever: built in $dest"
