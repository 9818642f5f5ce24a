# foreman: every target that needs the virtualenv creates it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser postgres test check lint format demo run stub fuzz crash bench \
	bench-quick bench-peers clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Chromium from the system's packages, for the dashboard's browser tests
browser:
	scripts/install-browser.sh

# PostgreSQL's server programs from the system's packages, for the tests that start a
# throwaway cluster of their own (nothing is started here)
postgres:
	scripts/install-postgres.sh

# the whole suite; the browser tests skip without a Chromium (`make browser` installs one),
# the PostgreSQL tests without PostgreSQL's server programs (`make postgres`)
test: $(STAMP)
	$(BIN)/pytest -q

# the inner loop, under a minute on 2 cores: lint, then the unit, property and stub tests;
# integration and the tiers marked `slow` (fuzz, real processes, the browser) are left to
# `make test`
check: lint
	$(BIN)/pytest -q -m "not slow" tests/unit tests/property tests/stub

# flake8-async's cancellation checks that ruff's ASYNC rules lack (unshielded awaits in
# finally/except, yields inside context managers in async generators, ...); ruff runs the rest
ASYNC_CHECKS := ASYNC102,ASYNC103,ASYNC104,ASYNC106,ASYNC111,ASYNC112,ASYNC113,ASYNC114,ASYNC118,ASYNC119,ASYNC120,ASYNC121,ASYNC122,ASYNC123,ASYNC125

lint: $(STAMP)
	$(BIN)/ruff check foreman tests scripts
	$(BIN)/ruff format --check foreman tests scripts
	find foreman scripts tests/fuzz -name '*.py' | sort | xargs -P2 -n40 \
	  $(BIN)/flake8-async --enable=$(ASYNC_CHECKS) --startable-in-context-manager=run,serve
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix foreman tests scripts
	$(BIN)/ruff format foreman tests scripts

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

run: $(STAMP)
	$(BIN)/foreman serve

stub: $(STAMP)
	$(BIN)/foreman stub

# FUZZ_EXAMPLES, FUZZ_MINUTES: the state machine's runs (FUZZ_REPLICA_EXAMPLES: its runs as
# replicas on PostgreSQL); FUZZ_HOSTILE_EXAMPLES: the corpus
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -o faulthandler_timeout=0 tests/property
	HYPOTHESIS_PROFILE=fuzz FUZZ_PROFILE=long $(BIN)/pytest -q -s -o faulthandler_timeout=0 \
	  tests/fuzz -k "not crash"

# CRASH_ROUNDS (100), CRASH_SEED: kill -9 rounds on one SQLite database, then as many killing
# either of two replicas on one PostgreSQL (skipped without PostgreSQL's server programs)
crash: $(STAMP)
	CRASH_ROUNDS=$${CRASH_ROUNDS:-100} $(BIN)/pytest -q -s -o faulthandler_timeout=0 \
	  tests/fuzz/test_crash.py

# the whole suite (under 15 minutes on 2 cores): writes docs/benchmarks.md and .json;
# one section alone: make bench BENCH_ARGS="--only fleet" (names: python -m scripts.bench -h).
# The replicas section starts a throwaway PostgreSQL of its own (`make postgres` installs the
# server programs); without them it says so in one line and is skipped.
# Then it fails if a figure is more than 30% worse than the committed docs/benchmarks.json;
# BENCH_ACCEPT=1 reports and passes (a deliberate change: commit the new figures)
bench: $(STAMP)
	$(BIN)/pip install --quiet py-spy
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

# smaller workloads, one repetition (under 3 minutes); writes to .bench/ and reports changes
# against the previous quick run there, without failing
bench-quick: $(STAMP)
	$(BIN)/python -m scripts.bench --quick --out .bench $(BENCH_ARGS)

# foreman beside LiteLLM's proxy on the same stub: installs the pinned LiteLLM into a
# virtualenv of its own (never foreman's) and writes docs/benchmarks-peers.md and .json;
# PEERS_ARGS=--quick for a smaller run
PEERS := .bench-peers
LITELLM := litellm[proxy]==1.81.13

$(PEERS)/venv/.installed:
	rm -rf $(PEERS)/venv
	$(PYTHON) -m venv $(PEERS)/venv
	$(PEERS)/venv/bin/pip install --quiet '$(LITELLM)' || { \
	  echo "bench-peers: could not install $(LITELLM) into $(PEERS)/venv (is PyPI reachable?)" >&2; \
	  exit 1; }
	touch $@

bench-peers: $(STAMP) $(PEERS)/venv/.installed
	$(BIN)/python -m scripts.bench.peers --litellm $(PEERS)/venv/bin/litellm $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .bench $(PEERS)
