# Two commands: `make run` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck models bench clean engines bubblewrap

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

models: $(STAMP)
	$(PY) functions/build_models.py

run: models bubblewrap
	$(VENV)/bin/faasd up --host 127.0.0.1 --port 8080 --functions functions --workflows workflows --state-dir state

# The cluster's engines (Debian serf and etcd-server), for the `cluster` tests, and iptables,
# with which the partition test cuts a node off inside namespaces of its own; as root, once.
# Without root they stay missing and those tests are skipped, saying so.
engines:
	@command -v serf >/dev/null && command -v etcd >/dev/null && command -v iptables \
	  >/dev/null || { [ "$$(id -u)" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install \
	    -y -q serf etcd-server iptables >/dev/null 2>&1 || { apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q serf etcd-server iptables \
	    >/dev/null; }; } \
	  || echo "serf/etcd/iptables missing (as root: apt-get install serf etcd-server" \
	    "iptables); the cluster tests will be skipped"; }

# bubblewrap (Debian `bubblewrap`), which confines the sandboxes; as root, once.
# Without root it stays missing: faasd then refuses to start unless allow_unconfined is set.
bubblewrap:
	@command -v bwrap >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap \
	    >/dev/null 2>&1 || { apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null; }; } \
	  || echo "bwrap missing (as root: apt-get install bubblewrap)"; }

# The whole suite this machine can run (everything but the GPU tests), then lint and types.
test: models engines bubblewrap
	$(PY) -m pytest -m "not gpu"
	$(MAKE) --no-print-directory lint typecheck

# The quick layer only: pure cores and fast checks.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not cluster and not gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: models
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) state build *.egg-info
