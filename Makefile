# `make test` works on a fresh machine: it builds .venv, installs the package with
# its test extras, installs the pinned kite.js for the interop tests, and runs pytest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KITEJS := tests/interop/kitejs

.PHONY: test lint run bench clean deps

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(KITEJS)/node_modules/.installed: $(KITEJS)/package.json $(KITEJS)/package-lock.json
	cd $(KITEJS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(VENV)/.installed $(KITEJS)/node_modules/.installed

test: deps
	$(PY) -m ruff check kite examples tests bench
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check kite examples tests bench

run: $(VENV)/.installed
	$(PY) -m examples.math.run

bench: deps
	$(PY) bench/bench_square.py

clean:
	rm -rf $(VENV) $(KITEJS)/node_modules
