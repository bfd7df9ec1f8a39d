# CSI protocol stubs and the conformance tool (csi-sanity), both built from pinned
# Go modules. Go's module and build caches live under ~/.cache so CI reuses them.
GO_CACHE     := $(HOME)/.cache
GO_ENV       := GOMODCACHE=$(GO_CACHE)/go-mod GOCACHE=$(GO_CACHE)/go-build GOFLAGS=-modcacherw
SPEC_MODULE  := $(shell sed -n 's/^module //p' proto/SOURCE)
SPEC_VERSION := $(shell sed -n 's/^version //p' proto/SOURCE)
SPEC_SUM     := $(shell sed -n 's/^sum //p' proto/SOURCE)
PB_DIR       := csi_driver/csi_pb
PB_FILES     := $(PB_DIR)/csi_pb2.py $(PB_DIR)/csi_pb2_grpc.py
# csi-sanity: github.com/kubernetes-csi/csi-test/v5 at CSI_SANITY_VERSION (mk/versions.mk).
CSI_SANITY := $(GO_CACHE)/csi-driver/go-bin/csi-sanity-$(CSI_SANITY_VERSION)
export CSI_SANITY

.PHONY: proto proto-verify csi-sanity

# Fails when the Go module's checksum or its csi.proto differ from what is pinned.
proto-verify:
	@info=$$(env $(GO_ENV) go mod download -json $(SPEC_MODULE)@$(SPEC_VERSION)) || exit 1; \
	sum=$$(printf '%s' "$$info" | sed -n 's/.*"Sum": "\(.*\)".*/\1/p'); \
	dir=$$(printf '%s' "$$info" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'); \
	if [ "$$sum" != "$(SPEC_SUM)" ]; then echo "CSI spec $(SPEC_VERSION): checksum $$sum, pinned $(SPEC_SUM)"; exit 1; fi; \
	cmp "$$dir/csi.proto" proto/csi.proto || { echo "proto/csi.proto differs from $(SPEC_MODULE)@$(SPEC_VERSION)"; exit 1; }; \
	echo "proto/csi.proto is $(SPEC_MODULE)@$(SPEC_VERSION) ($(SPEC_SUM))"

proto: $(PB_FILES)

# The proto is placed under the package path so the generated modules import each
# other as csi_driver.csi_pb.*; the output is never edited by hand (and not committed).
$(PB_FILES) &: proto/csi.proto proto/SOURCE $(STAMP)
	rm -rf build/proto && mkdir -p build/proto/$(PB_DIR) $(PB_DIR)
	cp proto/csi.proto build/proto/$(PB_DIR)/csi.proto
	$(BIN)/python -m grpc_tools.protoc -Ibuild/proto --python_out=. --pyi_out=. \
	  --grpc_python_out=. $(PB_DIR)/csi.proto
	printf '"""Generated from proto/csi.proto by `make proto`; do not edit."""\n\nSPEC_VERSION = "%s"\n' \
	  "$(SPEC_VERSION)" > $(PB_DIR)/__init__.py
	touch $(PB_FILES)

csi-sanity: $(CSI_SANITY)

$(CSI_SANITY):
	@mkdir -p $(dir $@) build/go-bin
	env $(GO_ENV) GOBIN=$(CURDIR)/build/go-bin go install \
	  github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION)
	mv build/go-bin/csi-sanity $@
