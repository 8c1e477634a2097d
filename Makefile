# zcserve: `make bench` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DEMO := .demo
PY_DIRS := zcserve tests $(wildcard benchmarks)

.PHONY: all setup test lint typecheck pytest soak fmt serve bench compare compare-https clean mutants

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[bench,test]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m "not soak"

test: lint typecheck pytest

soak: $(STAMP)
	$(BIN)/pytest -m soak

fmt: $(STAMP)
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

$(DEMO)/.made: $(STAMP)
	$(BIN)/python -m zcserve.demo $(DEMO)
	touch $@

serve: $(DEMO)/.made
	$(BIN)/zcserve serve $(DEMO) --port $(PORT) --listing

bench: $(STAMP)
	$(BIN)/zcserve bench

# The side-by-side table: nginx and wrk from the OS packages, aiohttp from PyPI.
compare: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk curl)
	$(BIN)/python -m pip install -q aiohttp
	$(BIN)/python benchmarks/compare.py $(COMPARE_ARGS)

# HTTPS beside HTTP: nginx with ssl, zcserve with --tls-cert/--tls-key, aiohttp with an
# ssl context, and each one's HTTP twin; openssl makes the self-signed certificate.
compare-https: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null && command -v openssl >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk curl openssl)
	$(BIN)/python -m pip install -q aiohttp
	$(BIN)/python benchmarks/compare.py --tls --sizes 4KiB,64KiB,1MiB --concurrency 64 --tools wrk --no-single $(COMPARE_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) .mypy_cache .pytest_cache .ruff_cache bench-results

# Plant each known defect in a copy of the tree and check the tests catch it (minutes).
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants $(MUTANTS)
