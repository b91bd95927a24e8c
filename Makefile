# Every target bootstraps .venv first (idempotent: reinstalls only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export UNTWINE_CACHE ?= $(CURDIR)/.cache/untwine

.PHONY: venv quickstart test bench bench-peers clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

quickstart: $(STAMP)
	$(VENV)/bin/untwine quickstart

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py

bench-peers: $(STAMP)
	bash benchmarks/peers/setup.sh

clean:
	rm -rf .cache runs
