# pxejoin — see README.md. Every target that needs something installs it first (Debian 12, as root).
SHELL := /bin/bash
K8S_VERSION ?= v1.37.2
# etcd for the kubeadm-shaped control plane (kubeadm v1.37's etcd manifest needs etcd >= 3.6; Debian 12 has 3.4).
ETCD_VERSION ?= v3.7.3
CACHE ?= /var/cache/pxejoin
K8S_BIN := $(CACHE)/k8s/$(K8S_VERSION)
GO ?= go
export PXEJOIN_K8S_BIN := $(K8S_BIN)
export PXEJOIN_CACHE := $(CACHE)
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build deps k8s test test-short test-e2e bench bench-join bench-fleet fuzz lab lab-down images bootserver-image clean vet

all: build

# Static binaries: nodeagent also runs as the initramfs's /init, where there is no libc.
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w"
build:
	$(GOBUILD) -o bin/ ./nodeagent ./bootserver ./lab/cmd/lab

deps:
	lab/install-deps.sh

k8s: deps
	lab/build-k8s.sh $(CACHE)/k8s $(K8S_VERSION) $(ETCD_VERSION)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above are not formatted"; exit 1; }

# Everything: unit tests, the boot server on real links, joins against a real control plane, a short
# run of every fuzz target.
test: deps k8s vet build
	$(GO) test -count=1 -timeout 40m ./...
	lab/fuzz.sh 20000x
	VAGRANT_DOTFILE_PATH=$$(mktemp -d) vagrant validate

# Every VM case: BIOS, UEFI with the iPXE ROM, UEFI native PXE, wrong CA pin, boot server restart, a
# control-plane node PXE-booted into the kubeadm-made cluster (TestControlPlaneVMJoin), the persistent
# cases (a refused disk, a re-image, another cluster's credentials) and a boot server killed mid-boot.
test-e2e: deps k8s build
	PXEJOIN_E2E=all $(GO) test -count=1 -v -timeout 150m ./lab/e2e

# The node image (debootstrap + containerd + kubelet, squashfs), cached by inputs.
images: deps k8s
	images/build.sh images/out

# The boot server's container image, an OCI archive for `ctr -n k8s.io images import` (deploy/).
BOOTSERVER_IMAGE ?= pxejoin.io/bootserver:dev
bootserver-image: deps
	images/bootserver.sh bin/bootserver-image.tar $(BOOTSERVER_IMAGE)

# The whole chain: control plane, boot server and LAB_NODES VMs (default 2) until the Nodes are Ready.
lab: deps k8s build
	bin/lab up -agent bin/nodeagent

# bin/lab as make build made it (built only when missing, with build's flags so the build cache
# serves it: other flags recompiled client-go, minutes on a loaded machine).
lab-down:
	test -x bin/lab || $(GOBUILD) -o bin/ ./lab/cmd/lab
	bin/lab down

# Quick iteration: pure-logic tests only (no control plane, no namespaces, no VM).
test-short: build
	$(GO) test -short -count=1 ./...

bench: deps k8s build
	$(GO) test -run '^$$' -bench . -benchtime 1x -count=1 -p 1 -timeout 40m ./...

bench-join: deps k8s build
	$(GO) test -run '^$$' -bench 'Join' -benchtime 1x -count=1 -timeout 30m ./nodeagent/...

# The fleet: FLEET_N (default 1000) simulated machines DHCP, fetch script and join file from the real
# boot server and run the agent's join against a real control plane at once, beside a reference of the
# same joins with tokens made beforehand (lab/fleet).
FLEET_N ?= 1000
bench-fleet: deps k8s build
	$(GO) run ./lab/cmd/fleet -n $(FLEET_N) -inventory both
	$(GO) run ./lab/cmd/fleet -n $(FLEET_N) -ha

fuzz:
	lab/fuzz.sh $(or $(FUZZTIME),2m)

clean:
	rm -rf bin
