# Every target installs what it needs first, so each works on a fresh clone.
PYTHON ?= python3
# The Cinder release the venv is built on: 29 (the newest, in .venv, pinned by
# constraints.txt) or an older supported one NN (.venv-cinderNN, pinned by
# constraints-cinderNN.txt: each such file adds a supported release).
NEWEST_CINDER  := $(shell sed -n 's/^cinder==\([0-9]*\)\..*/\1/p' constraints.txt)
OLDER_CINDER   := $(patsubst constraints-cinder%.txt,%,$(wildcard constraints-cinder*.txt))
CINDER_RELEASES := $(OLDER_CINDER) $(NEWEST_CINDER)
CINDER ?= $(NEWEST_CINDER)
ifeq ($(filter $(CINDER),$(CINDER_RELEASES)),)
$(error CINDER=$(CINDER): supported Cinder releases are $(CINDER_RELEASES))
endif
ifeq ($(CINDER),$(NEWEST_CINDER))
VENV        := .venv
CONSTRAINTS := constraints.txt
else
VENV        := .venv-cinder$(CINDER)
CONSTRAINTS := constraints-cinder$(CINDER).txt
endif
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: lvm2 gives `vgs`, which Cinder's LVM driver runs;
# strace counts the fsyncs of each RPC (tests/csi/test_fsync_budget.py, bench-fsyncs).
APT_PACKAGES := lvm2 strace

.PHONY: install system-deps run demo test lint format bench bench-serialization bench-listing \
	bench-fsyncs bench-startup bench-rpc bench-stores clean

install: system-deps $(STAMP) proto

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Versions are pinned by $(CONSTRAINTS) (constraints.txt: cinder 29.0.0, os-brick 7.1.1
# and their deps; constraints-cinder28.txt: the same with cinder 28.0.0).
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[test,codegen]'
	touch $@

# A venv on an older Cinder release beside .venv, with the Ceph bindings (the
# cross-release tests run Cinder's RBDDriver in it): `make venv-cinder-28`.
venv-cinder-%:
	$(MAKE) install ceph-deps CINDER=$*

# The plugin in `all` mode on the embedded default (config/embedded.yaml): FileDriver
# volumes and SQLite metadata under ./data. It prints the socket and a call to try.
# Node calls (stage/publish) need root: they use loop devices and mounts.
run: install
	@install -d -m 0700 data
	$(BIN)/csi-driver --endpoint unix://$(CURDIR)/data/csi.sock --mode all --config config/embedded.yaml

# The storage library's life cycle on the embedded default, one JSON line a step.
demo: install
	$(BIN)/csi-driver demo --data-dir data

# Every suite. On the newest release this builds each older release's venv first: the
# cross-release tests (marker cross_release) make resources there and take them over
# here. On an older release (CINDER=28): OLDER_SUITES, the storage library's and the
# CSI plugin's suites by default, without the cross-release tests.
OLDER_SUITES ?= tests/storage tests/csi
test: install csi-sanity $(if $(filter $(NEWEST_CINDER),$(CINDER)),$(addprefix venv-cinder-,$(OLDER_CINDER)))
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(if $(filter $(OLDER_CINDER),$(CINDER)),-m "not cross_release" $(OLDER_SUITES))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Prints one JSON line (also kept in bench-results/).
bench-serialization: install
	@mkdir -p bench-results
	$(BIN)/python benchmarks/serialization.py | tee bench-results/serialization.json

# ListVolumes page cost at 1 000 and 10 000 volumes (goal: within 2x, i.e. O(page)).
bench-listing: install
	@mkdir -p bench-results
	$(BIN)/python benchmarks/list_volumes.py | tee bench-results/list_volumes.json

# Fsyncs and store commits per controller RPC (strace), and the CreateVolume+DeleteVolume
# pair p50 (100 pairs, median of 3 runs).
bench-fsyncs: install
	@mkdir -p bench-results
	$(BIN)/python benchmarks/fsyncs.py | tee bench-results/fsyncs.json

# Seconds from process start to a ready Probe and RSS, per mode (stage + publish as root).
bench-startup: install
	@mkdir -p bench-results
	$(BIN)/python benchmarks/startup.py | tee bench-results/startup.json

# Every benchmark on the working tree and on a baseline commit (a git worktree of the
# merge-base with origin/main, or BENCH_BASELINE=<rev>; BENCH_BASELINE=none: no baseline),
# alternated to share the machine's noise: ONE JSON document with current/baseline ratios,
# also in bench-results/bench-<date>.json and bench-results/latest.json.
bench: install
	@mkdir -p bench-results
	@$(BIN)/python benchmarks/run_all.py

# CreateVolume+DeleteVolume pairs: p50/p90/p99 sequential and at 8/32 clients, pairs/s,
# and the plugin's RSS idle and with 1 000 volumes.
bench-rpc: install
	@mkdir -p bench-results
	$(BIN)/python benchmarks/rpc_latency.py | tee bench-results/rpc_latency.json

# Every metadata store side by side (real etcd and kube-apiserver on loopback): create,
# get and list-page p50/p99 and full-listing time at 1 000 and 10 000 volumes.
bench-stores: install etcd-deps kube-binaries
	@mkdir -p bench-results
	$(BIN)/python benchmarks/stores.py | tee bench-results/stores.json

clean:
	rm -rf $(VENV) .venv-cinder* data bench-results .pytest_cache .ruff_cache csi_driver/csi_pb csi_driver/kubelet/registration_pb build

# Test infrastructure (Ceph test cluster, VM harness) keeps its targets in mk/*.mk.
include mk/versions.mk
-include $(filter-out mk/versions.mk,$(wildcard mk/*.mk))
