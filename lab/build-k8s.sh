#!/usr/bin/env bash
# Builds the Kubernetes commands the tests and the lab need from the Go module proxy, cached by version.
# Usage: lab/build-k8s.sh OUTDIR [VERSION] ; binaries land in OUTDIR/<version>/.
# How and why: ../shared/notes/control-plane.md (a wrapper module that replaces the staging modules).
set -euo pipefail
out=${1:?usage: build-k8s.sh OUTDIR [VERSION]}
ver=${2:-v1.37.2}
cmds=(kube-apiserver kube-controller-manager kubelet kubectl)
dest="$out/$ver"
missing=()
for c in "${cmds[@]}"; do [ -x "$dest/$c" ] || missing+=("$c"); done
[ ${#missing[@]} -eq 0 ] && { echo "k8s $ver: cached in $dest"; exit 0; }
mkdir -p "$dest"
work="$out/.wrapper-$ver"
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
cat > "$work/tools.go" <<'G'
//go:build tools

package tools
G
cd "$work"
pkgs=()
for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
GOFLAGS=-mod=mod go get "${pkgs[@]}"
vpkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ld="-s -w"
for p in "${vpkgs[@]}"; do
  ld="$ld -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
for c in "${missing[@]}"; do
  echo "building $c $ver" >&2
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$dest/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  mv "$dest/$c.tmp" "$dest/$c"
done
echo "k8s $ver: built in $dest"
