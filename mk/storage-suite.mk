# Kubernetes' own storage suite (e2e.test from k8s.io/kubernetes/test/e2e, focused on
# External.Storage) against the chart on a single-node cluster of its own
# (e2e/storage-suite/README.md). e2e.test, ginkgo and agnhost are built from the Go
# module proxy at $(KUBE_VERSION) and cached next to the Kubernetes binaries.
E2E_BIN := $(KUBE_DIR)/e2e-bin
# Reports: <dir>/<time>/ (junit.xml, e2e.log, summary.json, logs/ on a failure).
STORAGE_SUITE_OUT   ?= e2e/.storage-suite
# Parallel e2e.test processes (the [Serial] specs run alone at the end).
STORAGE_SUITE_PROCS ?= 4
# Empty: the whole suite; `ci`: the fixed subset .ci/run runs (e2e/storage-suite/subsets.py);
# anything else: a regular expression of the specs to run ("volume-expand").
STORAGE_SUITE_SUBSET ?=

.PHONY: e2e-test-binaries e2e-storage-suite e2e-storage-suite-list

e2e-test-binaries:
	@env $(GO_ENV) e2e/storage-suite/build-e2e-test.sh $(KUBE_VERSION) $(KUBE_DIR)

STORAGE_SUITE_ARGS = --e2e-bin $(E2E_BIN) --kube-bin $(KUBE_BIN) --kube-version $(KUBE_VERSION) \
  --containerd-bin $(CONTAINERD_BIN) --images $(IMAGES_DIR) --helm $(HELM) \
  --procs $(STORAGE_SUITE_PROCS) $(if $(STORAGE_SUITE_SUBSET),--subset '$(STORAGE_SUITE_SUBSET)')

e2e-storage-suite: install images tools chart-crds e2e-test-binaries kube-binaries \
                   containerd-binaries node-deps etcd-deps
	$(BIN)/python e2e/storage-suite/run.py $(STORAGE_SUITE_ARGS) \
	  --out $(STORAGE_SUITE_OUT)/$$(date +%Y%m%d-%H%M%S)

# The specs a run would select, without a cluster (ginkgo --dry-run).
e2e-storage-suite-list: install e2e-test-binaries helm
	$(BIN)/python e2e/storage-suite/run.py $(STORAGE_SUITE_ARGS) --dry-run \
	  --out $(STORAGE_SUITE_OUT)/dry-run
