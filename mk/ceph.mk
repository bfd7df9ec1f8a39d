# Ceph test cluster for the RBD tests (tests/storage/rbd, harness e2e/ceph/cluster.py):
# Debian's daemons and CLI, and its rados/rbd Python bindings made importable in the venv.
#
# PyPI has no usable rados/rbd package, and Debian's dist-packages would drag every other
# Debian Python module into the venv: the venv gets a directory holding only symlinks to
# the two extension modules (built for Debian's CPython 3.11), put on its path by a .pth.
# os-brick imports them (and so loads librados, ~17 MiB) in every process that can: a
# process that needs no RBD can opt out with CSI_DRIVER_CEPH_BINDINGS=0.
CEPH_APT_PACKAGES := ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd
CEPH_BINDINGS_DIR := $(abspath $(VENV))/ceph-bindings
CEPH_BINDINGS_PTH := csi-driver-ceph-bindings.pth

.PHONY: ceph-deps

# `make test` runs the RBD tests, so it needs all of this (prerequisites of one target merge).
test: ceph-deps

ceph-deps: $(STAMP)
	@missing=""; for p in $(CEPH_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(CEPH_BINDINGS_DIR)
	@for p in python3-rados python3-rbd; do \
	  so=$$(dpkg -L $$p | grep -E '/(rados|rbd)\.cpython-[^/]*\.so$$'); \
	  [ -n "$$so" ] || { echo "ceph-deps: no rados/rbd extension module in package $$p" >&2; exit 1; }; \
	  ln -sfn $$so $(CEPH_BINDINGS_DIR)/; \
	done
	@purelib=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
	echo "import os, sys; d = '$(CEPH_BINDINGS_DIR)'; os.environ.get('CSI_DRIVER_CEPH_BINDINGS', '1') == '0' or d in sys.path or sys.path.append(d)" \
	  > "$$purelib/$(CEPH_BINDINGS_PTH)"
	@$(BIN)/python -c 'import rados, rbd' || { \
	  echo "ceph-deps: the venv cannot import Debian's rados/rbd modules ($$(ls $(CEPH_BINDINGS_DIR)));" \
	       "they are built for Debian's CPython, the venv runs $$($(BIN)/python -V)" >&2; exit 1; }
