# A real etcd and Kubernetes control plane for the tests (harness e2e/cluster/cluster.py,
# pytest fixtures tests/csi_support/cluster.py).
#
# etcd is Debian's etcd-server (etcdctl from etcd-client). The Kubernetes binaries are
# built from the Go module proxy at a pinned release by e2e/cluster/build-kubernetes.sh
# (a cold build takes 10-20 minutes on 2 cores; when they are present it is a no-op).
ETCD_APT_PACKAGES := etcd-server etcd-client openssl
# $(HOME), not $(GO_CACHE): mk/csi.mk is included after this file.
KUBE_DIR     := $(HOME)/.cache/csi-driver/kubernetes-$(KUBE_VERSION)
KUBE_BIN     := $(KUBE_DIR)/bin
# Where the harness finds its programs (it falls back to PATH for etcd/etcdctl).
ETCD         := /usr/bin/etcd
ETCDCTL      := /usr/bin/etcdctl
export KUBE_BIN ETCD ETCDCTL
CLUSTER_STATE := e2e/.cluster

.PHONY: etcd-deps kube-binaries cluster-up cluster-down

# The cluster tests (tests/cluster) and everything using the etcd/apiserver fixtures.
test: etcd-deps kube-binaries

# apt may be locked for a moment by another job on a shared host: one retry.
etcd-deps:
	@missing=""; for p in $(ETCD_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  install_pkgs() { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; }; \
	  install_pkgs || { echo "apt-get failed, retrying in 20 s"; sleep 20; install_pkgs; }; \
	fi

kube-binaries:
	@env $(GO_ENV) e2e/cluster/build-kubernetes.sh $(KUBE_VERSION) $(KUBE_DIR)

# etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1, left
# running; `source $(CLUSTER_STATE)/env` gives KUBECONFIG, KUBECTL and ETCD_ENDPOINT.
cluster-up: etcd-deps kube-binaries
	@$(PYTHON) e2e/cluster/cluster.py up --state-dir $(CLUSTER_STATE) --kube-bin $(KUBE_BIN)

# Stops only the processes cluster-up recorded, then removes $(CLUSTER_STATE).
cluster-down:
	@$(PYTHON) e2e/cluster/cluster.py down --state-dir $(CLUSTER_STATE)
