# VM test suite (issue #4): Cinder's LVM driver with LIO iSCSI and NVMe/TCP targets, and
# Cinder's RBD driver on a Ceph test cluster mapped with krbd, attached by os-brick, inside
# a qemu guest running Debian's kernel (this machine's own kernel has no device-mapper,
# LIO, iscsi_tcp, nvme-tcp or rbd). See e2e/vm/run.py.
#
#   make test-vm                          # tests/vm in the guest; prints the wall time
#   make test-vm VM_ARGS='tests/vm/test_errors.py -x'

# Host side: qemu and the kernel the guest boots. Guest side (the same root filesystem,
# shared read-only): LVM with thin pools, LIO (targetcli for debugging), the iSCSI and
# NVMe initiators, udev, the system bus, sudo for the privsep-helper test, lsscsi (os-brick's
# iSCSI rescan after a volume grows runs it: NodeExpandVolume).
VM_APT_PACKAGES := qemu-system-x86 linux-image-amd64 kmod iproute2 lvm2 thin-provisioning-tools \
	targetcli-fb open-iscsi nvme-cli busybox-static udev dbus sudo lsscsi
# virtme-ng boots the kernel; rtslib-fb is what cinder-rtstool (lioadm) drives LIO with.
VM_PIP_PACKAGES := virtme-ng==1.42 argcomplete==3.7.2 rtslib-fb==2.2.4

# Cinder's nvmet target imports the `nvmet` module of nvmetcli, which is neither on PyPI
# nor in bookworm: Debian sid's arch-all, pure-Python package, pinned by its SHA256 (the
# one in sid's signed Packages index). Only its `nvmet` package is put on the venv's path;
# it imports nothing but the standard library (configshell is for the nvmetcli CLI).
# apt fetches it from NVMETCLI_SUITE on the mirror the machine's apt uses for bookworm,
# through a private sources list and lists directory (e2e/images/apt_sources.py writes
# the entry): the system's apt sources, lists and caches are never touched.
NVMETCLI_VERSION := 0.9-1
NVMETCLI_SUITE   := unstable
NVMETCLI_DEB     := nvmetcli_$(NVMETCLI_VERSION)_all.deb
NVMETCLI_SHA256  := 19d96b2e631f5e55c3be2d3cc8541feee0a0b297ae95ac60aa68b0bc23a54de6
VM_CACHE         := $(HOME)/.cache/csi-driver
NVMETCLI_ROOT    := $(VM_CACHE)/nvmetcli-$(NVMETCLI_VERSION)
NVMET_PATH_DIR   := $(VM_CACHE)/nvmet-path
VM_STAMP         := $(VENV)/.vm-deps

VM_ARGS ?=

.PHONY: vm-deps vm-system-deps test-vm test-vm-full

vm-system-deps:
	@missing=""; for p in $(VM_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The krbd test starts the Ceph test cluster in the guest and os-brick runs `rbd map`
# there (ceph-common, with its udev rule for /dev/rbd/POOL/IMAGE): mk/ceph.mk's packages.
vm-deps: install vm-system-deps ceph-deps $(VM_STAMP)

$(VM_STAMP): $(STAMP) mk/vm.mk $(VM_CACHE)/$(NVMETCLI_DEB)
	$(BIN)/pip install -q -c constraints.txt $(VM_PIP_PACKAGES)
	rm -rf $(NVMETCLI_ROOT) $(NVMET_PATH_DIR)
	dpkg-deb -x $(VM_CACHE)/$(NVMETCLI_DEB) $(NVMETCLI_ROOT)
	mkdir -p $(NVMET_PATH_DIR)
	ln -s $(NVMETCLI_ROOT)/usr/lib/python3/dist-packages/nvmet $(NVMET_PATH_DIR)/nvmet
	echo $(NVMET_PATH_DIR) > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/csi-driver-nvmet.pth"
	$(BIN)/python -c 'import nvmet, rtslib_fb, virtme_ng'
	touch $@

# Kept under its final name only once its SHA256 matched the pin.
$(VM_CACHE)/$(NVMETCLI_DEB):
	@set -e; mkdir -p $(VM_CACHE); tmp=$$(mktemp -d $(VM_CACHE)/.nvmetcli.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/lists/partial" "$$tmp/cache/archives/partial" "$$tmp/deb"; \
	$(PYTHON) e2e/images/apt_sources.py line bookworm $(NVMETCLI_SUITE) > "$$tmp/sources.list"; \
	echo "apt: nvmetcli=$(NVMETCLI_VERSION) from $$(cat "$$tmp/sources.list")"; \
	apt_private() { apt-get -q -o Dir::Etc::sourcelist="$$tmp/sources.list" -o Dir::Etc::sourceparts=- \
	  -o Dir::State::Lists="$$tmp/lists" -o Dir::Cache="$$tmp/cache" -o Acquire::Languages=none \
	  -o APT::Sandbox::User=root "$$@"; }; \
	apt_private update >/dev/null; \
	(cd "$$tmp/deb" && apt_private download nvmetcli=$(NVMETCLI_VERSION) >/dev/null); \
	echo "$(NVMETCLI_SHA256)  $$tmp/deb/$(NVMETCLI_DEB)" | sha256sum -c --quiet; \
	mv "$$tmp/deb/$(NVMETCLI_DEB)" $@

# `make test-vm` (in .ci/run) runs every VM test but csi-sanity's whole suite on RBD with
# krbd (~6 of its ~20 min; the krbd attach itself stays proven by test_krbd), to keep CI
# within its budget beside `make e2e`. `make test-vm-full` runs all of tests/vm.
VM_CI_ARGS := -- tests/vm --deselect tests/vm/test_csi_sanity.py::test_full_suite_on_rbd_krbd

# The runner prints its own wall time and a summary; this line adds the dependencies' share.
test-vm test-vm-full: vm-deps csi-sanity
	@start=$$(date +%s); status=0; \
	$(BIN)/python e2e/vm/run.py $(or $(VM_ARGS),$(if $(filter test-vm,$@),$(VM_CI_ARGS))) \
	  || status=$$?; \
	echo "make $@ took $$(( $$(date +%s) - start ))s"; exit $$status
