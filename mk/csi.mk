# CSI protocol stubs and the conformance tool (csi-sanity), both built from pinned
# Go modules. Go's module and build caches live under ~/.cache so CI reuses them.
GO_CACHE     := $(HOME)/.cache
GO_ENV       := GOMODCACHE=$(GO_CACHE)/go-mod GOCACHE=$(GO_CACHE)/go-build GOFLAGS=-modcacherw
SPEC_MODULE  := $(shell sed -n 's/^module //p' proto/SOURCE)
SPEC_VERSION := $(shell sed -n 's/^version //p' proto/SOURCE)
SPEC_SUM     := $(shell sed -n 's/^sum //p' proto/SOURCE)
# kubelet's plugin-registration API, pinned the same way (plus the file's path in the
# module); its version must be KUBELET_API_VERSION (mk/versions.mk).
REG_PIN      := proto/pluginregistration/SOURCE
REG_MODULE   := $(shell sed -n 's/^module //p' $(REG_PIN))
REG_VERSION  := $(shell sed -n 's/^version //p' $(REG_PIN))
REG_SUM      := $(shell sed -n 's/^sum //p' $(REG_PIN))
REG_PATH     := $(shell sed -n 's/^path //p' $(REG_PIN))
PB_DIR       := csi_driver/csi_pb
PB_FILES     := $(PB_DIR)/csi_pb2.py $(PB_DIR)/csi_pb2_grpc.py
REG_PB_DIR   := csi_driver/kubelet/registration_pb
REG_PB_FILES := $(REG_PB_DIR)/api_pb2.py $(REG_PB_DIR)/api_pb2_grpc.py
# csi-sanity: github.com/kubernetes-csi/csi-test/v5 at CSI_SANITY_VERSION (mk/versions.mk).
CSI_SANITY := $(GO_CACHE)/csi-driver/go-bin/csi-sanity-$(CSI_SANITY_VERSION)
export CSI_SANITY

.PHONY: proto proto-verify csi-sanity

# Fails when a Go module's checksum or a pinned proto differs from what is pinned:
# proto/csi.proto (proto/SOURCE) and proto/pluginregistration/api.proto ($(REG_PIN)).
proto-verify:
	@set -e; \
	verify() { \
	  info=$$(env $(GO_ENV) go mod download -json "$$1@$$2") || exit 1; \
	  sum=$$(printf '%s' "$$info" | sed -n 's/.*"Sum": "\(.*\)".*/\1/p'); \
	  dir=$$(printf '%s' "$$info" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'); \
	  if [ "$$sum" != "$$3" ]; then echo "$$1 $$2: checksum $$sum, pinned $$3"; exit 1; fi; \
	  cmp "$$dir/$$4" "$$5" || { echo "$$5 differs from $$4 of $$1@$$2"; exit 1; }; \
	  echo "$$5 is $$4 of $$1@$$2 ($$3)"; \
	}; \
	verify '$(SPEC_MODULE)' '$(SPEC_VERSION)' '$(SPEC_SUM)' csi.proto proto/csi.proto; \
	if [ '$(REG_MODULE)@$(REG_VERSION)' != '$(KUBELET_API_MODULE)@$(KUBELET_API_VERSION)' ]; then \
	  echo "$(REG_PIN) pins $(REG_MODULE)@$(REG_VERSION), mk/versions.mk says $(KUBELET_API_MODULE)@$(KUBELET_API_VERSION)"; \
	  exit 1; \
	fi; \
	verify '$(REG_MODULE)' '$(REG_VERSION)' '$(REG_SUM)' '$(REG_PATH)' proto/pluginregistration/api.proto

proto: $(PB_FILES) $(REG_PB_FILES)

# proto/generate.py writes every stub package (csi_driver/csi_pb/, $(REG_PB_DIR)/); the
# output is never edited by hand (and not committed).
$(PB_FILES) $(REG_PB_FILES) &: proto/generate.py proto/csi.proto proto/SOURCE \
    proto/pluginregistration/api.proto $(REG_PIN) $(STAMP)
	$(BIN)/python proto/generate.py
	touch $(PB_FILES) $(REG_PB_FILES)

csi-sanity: $(CSI_SANITY)

$(CSI_SANITY):
	@mkdir -p $(dir $@) build/go-bin
	env $(GO_ENV) GOBIN=$(CURDIR)/build/go-bin go install \
	  github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION)
	mv build/go-bin/csi-sanity $@
