# `make test` works on a fresh machine: it builds .venv, installs the package with
# its test extras, installs the pinned kite.js for the interop tests, and runs pytest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KITEJS := tests/interop/kitejs

.PHONY: test lint run bench bench-kontrol bench-kontrol-wrk bench-instructions soak fuzz clean deps etcd-server postgresql chromium

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(KITEJS)/node_modules/.installed: $(KITEJS)/package.json $(KITEJS)/package-lock.json
	cd $(KITEJS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The storage tests run a real etcd (3.4 serves both the v3 and, with --enable-v2, the v2 API).
etcd-server:
	@command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server)

# The postgres storage tests run a real PostgreSQL server from Debian's package (initdb'd into a temporary
# dir by the tests). Its binaries live in /usr/lib/postgresql/<version>/bin, not on PATH.
postgresql:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

# The browser test (tests/test_browser.py) drives Debian's Chromium with playwright (no browser download).
chromium:
	@command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

deps: $(VENV)/.installed $(KITEJS)/node_modules/.installed etcd-server postgresql chromium

# Three pytest processes side by side (tests/parallel.py: the tests mostly wait); PYTEST_ARGS go to each.
test: deps lint
	$(PY) tests/parallel.py $(PYTEST_ARGS)

# Style, the layer contracts of setup.cfg (DESIGN.md) and the types.
lint: $(VENV)/.installed
	$(PY) -m ruff check kite kitecli kontrol examples tests bench fuzz
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy

# The main job: Kontrol on sqlite, the math kite registered to it, a client finding it.
# KITE_HOME keeps the generated kite.key and database inside the project.
run: $(VENV)/.installed
	KITE_HOME=$(CURDIR)/.kite-home $(PY) -m examples.quickstart

# The call table, then JWT verification through PyJWT against the hand-written parser it replaced.
bench: deps
	$(PY) bench/run.py
	$(PY) bench/jwt_verify.py

# Instructions per round trip under callgrind (needs valgrind): the noise-free figure to compare versions by.
bench-instructions: deps
	$(PY) bench/instructions.py

# Kontrol at scale, today's code against 8e8e5a0 side by side (10k kites; sqlite, etcd, etcd2, postgres;
# 3 alternating rounds): ~20 minutes. BENCH_KONTROL_ARGS="--quick" (~4 min), "--storage etcd", "--baseline none".
bench-kontrol: deps
	$(PY) bench/kontrol_scale.py $(BENCH_KONTROL_ARGS)

# Kontrol's HTTP register/heartbeat under wrk (Debian's; a C load generator): one process against
# --workers N and 8e8e5a0, fresh etcd / PostgreSQL per run, 3 alternating rounds: ~10 minutes.
bench-kontrol-wrk: deps etcd-server postgresql
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) bench/kontrol_wrk.py --baseline 8e8e5a0 $(BENCH_KONTROL_WRK_ARGS)

# The fault-and-load suite held for 10 minutes per test instead of seconds, figures printed (tests/faults).
SOAK_SECONDS ?= 600
soak: deps
	KITE_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/faults -s -o timeout=0

# Long coverage-guided runs of every parser (atheris; fuzz/README.md). FUZZ_SECONDS per parser.
FUZZ_SECONDS ?= 60
fuzz: deps
	$(PY) -m pip install -q -e '.[fuzz]'
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) $(KITEJS)/node_modules
