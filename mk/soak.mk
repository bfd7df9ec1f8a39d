# Soak and long fuzzing (need root: loop devices, mounts).
#
#   make soak                                   # 16 clients x 60 s, then the fuzz soak profile
#   make soak SOAK_CLIENTS=32 SOAK_SECONDS=300
#
# e2e/soak/run.py races CSI clients on shared volume names against a controller process
# and a separate node process (FileDriver + SQLite in a temporary directory) and checks
# status codes, store/backend consistency, host leftovers and fd/thread/RSS growth; its
# JSON line is kept in bench-results/soak.json. Then tests/csi/test_fuzz.py runs with
# its `soak` profile (40000 calls instead of the 4000 of `make test`). Both always run;
# the target fails if either does.
SOAK_CLIENTS ?= 16
SOAK_SECONDS ?= 60

.PHONY: soak

soak: install
	@mkdir -p bench-results
	@status=0; \
	$(BIN)/python e2e/soak/run.py --clients $(SOAK_CLIENTS) --seconds $(SOAK_SECONDS) \
	  --output bench-results/soak.json || status=1; \
	CSI_DRIVER_FUZZ_PROFILE=soak $(BIN)/pytest tests/csi/test_fuzz.py || status=1; \
	exit $$status
