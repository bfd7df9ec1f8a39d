# A real etcd and Kubernetes control plane for the tests (harness e2e/cluster/cluster.py,
# pytest fixtures tests/csi_support/cluster.py).
#
# etcd is Debian's etcd-server (etcdctl from etcd-client). The Kubernetes binaries are
# built from the Go module proxy at a pinned release by e2e/cluster/build-kubernetes.sh
# (a cold build takes 10-20 minutes on 2 cores; when they are present it is a no-op).
ETCD_APT_PACKAGES := etcd-server etcd-client openssl
# The node (containerd + kubelet): Debian's runc runs the containers, its CNI plugins
# (/usr/lib/cni) wire the pod network, gcc + libc6-dev build the static pause program,
# busybox-static is the test pods' userland, iproute2 makes the bridge.
NODE_APT_PACKAGES := runc containernetworking-plugins gcc libc6-dev busybox-static iproute2
# containerd, containerd-shim-runc-v2 and ctr, built from the Go module proxy.
CONTAINERD_BIN := $(HOME)/.cache/csi-driver/containerd-$(CONTAINERD_VERSION)/bin
CONTAINERD_CMDS := containerd containerd-shim-runc-v2 ctr
# A directory of image archives (*.tar) `make cluster-up` imports into the node besides
# the pause image: by default what `make images` exported, when it did (`make images`
# also imports into a running node through `cluster.py import`).
CLUSTER_IMAGES ?= $(wildcard $(HOME)/.cache/csi-driver/images)
# $(HOME), not $(GO_CACHE): mk/csi.mk is included after this file.
KUBE_DIR     := $(HOME)/.cache/csi-driver/kubernetes-$(KUBE_VERSION)
KUBE_BIN     := $(KUBE_DIR)/bin
# Where the harness finds its programs (it falls back to PATH for etcd/etcdctl).
ETCD         := /usr/bin/etcd
ETCDCTL      := /usr/bin/etcdctl
export KUBE_BIN ETCD ETCDCTL CONTAINERD_BIN
CLUSTER_STATE := e2e/.cluster

.PHONY: etcd-deps node-deps kube-binaries containerd-binaries cluster-up cluster-down

# The cluster tests (tests/cluster) and everything using the etcd/apiserver fixtures.
test: etcd-deps kube-binaries

# apt may be locked for a moment by another job on a shared host: one retry.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  install_pkgs() { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; }; \
	  install_pkgs || { echo "apt-get failed, retrying in 20 s"; sleep 20; install_pkgs; }; \
	fi
endef

etcd-deps:
	$(call apt_install,$(ETCD_APT_PACKAGES))

node-deps:
	$(call apt_install,$(NODE_APT_PACKAGES))

kube-binaries:
	@env $(GO_ENV) e2e/cluster/build-kubernetes.sh $(KUBE_VERSION) $(KUBE_DIR)

# A no-op when all three are there and containerd reports the version. Built into a
# temporary GOBIN and moved into place, so an interrupted build leaves no partial binary.
containerd-binaries:
	@if [ "$$($(CONTAINERD_BIN)/containerd --version 2>/dev/null | awk '{print $$3}')" = $(CONTAINERD_VERSION) ] \
	  && [ -x $(CONTAINERD_BIN)/containerd-shim-runc-v2 ] && [ -x $(CONTAINERD_BIN)/ctr ]; then \
	  echo "containerd $(CONTAINERD_VERSION) binaries are up to date in $(CONTAINERD_BIN)"; \
	else \
	  set -e; echo "building containerd $(CONTAINERD_VERSION) (about 2 minutes with a warm Go cache)"; \
	  mkdir -p $(CONTAINERD_BIN); tmp=$$(mktemp -d $(CONTAINERD_BIN)/../.build.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
	  for c in $(CONTAINERD_CMDS); do \
	    env $(GO_ENV) GOBIN=$$tmp CGO_ENABLED=0 go install -trimpath -tags no_btrfs \
	      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
	      github.com/containerd/containerd/v2/cmd/$$c@$(CONTAINERD_VERSION); \
	  done; \
	  for c in $(CONTAINERD_CMDS); do mv $$tmp/$$c $(CONTAINERD_BIN)/$$c; done; \
	  $(CONTAINERD_BIN)/containerd --version; \
	fi

# A single-node cluster left running: etcd, kube-apiserver (on the pod bridge's
# 10.244.0.1), controller manager, scheduler, containerd and kubelet, with the pause
# image (and every *.tar in $(CLUSTER_IMAGES)) imported. `source $(CLUSTER_STATE)/env` gives
# KUBECONFIG, KUBECTL, ETCD_ENDPOINT, CONTAINERD_ADDRESS, CTR, KUBELET_DIR, NODE_NAME,
# KUBE_API_HOST, KUBE_API_PORT, CLUSTER_STATE and HOST_DATA_DIR.
cluster-up: etcd-deps node-deps kube-binaries containerd-binaries helm
	@$(PYTHON) e2e/cluster/cluster.py up --state-dir $(CLUSTER_STATE) --kube-bin $(KUBE_BIN) \
	  --node --containerd-bin $(CONTAINERD_BIN) $(if $(CLUSTER_IMAGES),--images $(CLUSTER_IMAGES))
	@echo "export HELM=$(HELM)" >> $(CLUSTER_STATE)/env

# Deletes the pods, stops only the processes cluster-up recorded, unmounts, removes the
# bridge, the cgroups and host paths the node created, then $(CLUSTER_STATE).
cluster-down:
	@$(PYTHON) e2e/cluster/cluster.py down --state-dir $(CLUSTER_STATE)
