# The chart on a real single-node cluster, driven only through helm and kubectl
# (e2e/tests; the README's "Install on Kubernetes" is what it runs). Also the manifests:
# the kustomize base is `helm template` output, kept in git and checked for freshness.
CHART               := charts/csi-driver
CHART_SNAPSHOT_CRDS := $(CHART)/crds
# Of external-snapshotter's CRDs, the three VolumeSnapshot kinds (the snapshot
# controller runs without the group-snapshot ones, with that feature off).
SNAPSHOT_CRD_FILES  := $(addprefix snapshot.storage.k8s.io_,volumesnapshotclasses.yaml \
                         volumesnapshotcontents.yaml volumesnapshots.yaml)
KUSTOMIZE_SNAPSHOT_CRDS := deploy/components/snapshot-crds/crds
# What deploy/base is rendered with (see deploy/README.md).
BASE_VALUES := deploy/base-values.yaml

.PHONY: e2e chart-crds manifests manifests-check

# The snapshot CRDs are external-snapshotter's files: copied from the Go module at the
# pinned release into the chart and the kustomize component (both git-ignored).
chart-crds: snapshot-crds
	@mkdir -p $(CHART_SNAPSHOT_CRDS) $(KUSTOMIZE_SNAPSHOT_CRDS)
	@for f in $(SNAPSHOT_CRD_FILES); do \
	  for d in $(CHART_SNAPSHOT_CRDS) $(KUSTOMIZE_SNAPSHOT_CRDS); do \
	    cmp -s $(SNAPSHOT_CRDS)/$$f $$d/$$f || cp $(SNAPSHOT_CRDS)/$$f $$d/$$f; done; done

# Regenerates deploy/base/ from the chart (commit the result).
manifests: helm
	@$(HELM) template csi-driver $(CHART) --namespace csi-driver -f $(BASE_VALUES) \
	  2>/dev/null > deploy/base/csi-driver.yaml
	@echo "deploy/base/csi-driver.yaml regenerated from $(CHART)"

# helm lint; helm template and every kustomize overlay validated offline (kubeconform,
# Kubernetes $(K8S_SCHEMA_VERSION) schemas); deploy/base/ must equal the chart's output.
manifests-check: helm kustomize kubeconform k8s-schemas chart-crds
	$(HELM) lint --strict $(CHART)
	$(HELM) template csi-driver $(CHART) --namespace csi-driver | $(KUBECONFORM) $(KUBECONFORM_FLAGS) -
	$(HELM) template csi-driver $(CHART) --namespace csi-driver -f e2e/values/single-node.yaml \
	  | $(KUBECONFORM) $(KUBECONFORM_FLAGS) -
	@$(HELM) template csi-driver $(CHART) --namespace csi-driver -f $(BASE_VALUES) 2>/dev/null \
	  | diff -u deploy/base/csi-driver.yaml - \
	  || { echo "deploy/base/ is stale: run 'make manifests' and commit it"; exit 1; }
	@for o in deploy/overlays/*/; do echo "kustomize build $$o"; \
	  $(KUSTOMIZE) build $$o | $(KUBECONFORM) $(KUBECONFORM_FLAGS) - || exit 1; done

# Builds (or reuses) every image, tool and binary, then runs e2e/tests on a cluster of its
# own (a temp directory; `make cluster-up` is not needed and not touched).
e2e: install images tools chart-crds manifests-check ceph-deps kube-binaries containerd-binaries node-deps etcd-deps
	env KUBE_BIN=$(KUBE_BIN) CONTAINERD_BIN=$(CONTAINERD_BIN) IMAGES_DIR=$(IMAGES_DIR) \
	  BUSYBOX_IMAGE=$(BUSYBOX_IMAGE) HELM=$(HELM) KUSTOMIZE=$(KUSTOMIZE) \
	  $(BIN)/pytest e2e/tests -v -p no:cacheprovider --timeout=900
