# zcserve: `make bench` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DEMO := .demo
PY_DIRS := zcserve tests $(wildcard benchmarks)

.PHONY: all help setup test lint typecheck pytest soak fmt serve bench compare compare-https clean mutants readme-table

all: test

help: ## list every target with what it does
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[bench,test]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install zcserve with its test and bench extras

lint: $(STAMP) ## ruff check and ruff format --check
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: $(STAMP) ## mypy --strict over the package and the tests
	$(BIN)/mypy

# Two passes, both run whatever the first says: most tests on $(JOBS) processes
# (pytest-xdist), then those marked serial (@pytest.mark.serial: timings and
# measurements) alone. Each pass prints its 20 slowest tests.
JOBS ?= 2
pytest: $(STAMP) ## the suite without the soak tests: in parallel, then the serial ones alone
	$(BIN)/pytest -m "not soak and not serial" -n $(JOBS) --dist worksteal --durations=20; \
	parallel=$$?; \
	$(BIN)/pytest -m "serial and not soak" --durations=20; \
	serial=$$?; \
	exit $$(( parallel ? parallel : serial ))

test: lint typecheck pytest ## what CI runs: lint, types, tests

soak: $(STAMP) ## load, faults and fuzzing at full size (minutes)
	$(BIN)/pytest -m soak

fmt: $(STAMP) ## rewrite the code with ruff
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

$(DEMO)/.made: $(STAMP)
	$(BIN)/python -m zcserve.demo $(DEMO)
	touch $@

serve: $(DEMO)/.made ## serve a generated demo folder with listings; PORT=8000 by default
	$(BIN)/zcserve serve $(DEMO) --port $(PORT) --listing

bench: $(STAMP) ## every strategy, sizes and concurrency levels: one table and plots
	$(BIN)/zcserve bench

# The side-by-side table: nginx and wrk from the OS packages, aiohttp from PyPI.
compare: $(STAMP) ## zcserve beside nginx and aiohttp (installs nginx, wrk); COMPARE_ARGS=...
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk curl)
	$(BIN)/python -m pip install -q aiohttp
	$(BIN)/python benchmarks/compare.py $(COMPARE_ARGS)

# HTTPS beside HTTP: nginx with ssl, zcserve with --tls-cert/--tls-key, aiohttp with an
# ssl context, and each one's HTTP twin; openssl makes the self-signed certificate.
compare-https: $(STAMP) ## the same over HTTPS, each server beside its HTTP twin
	command -v nginx >/dev/null && command -v wrk >/dev/null && command -v openssl >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk curl openssl)
	$(BIN)/python -m pip install -q aiohttp
	$(BIN)/python benchmarks/compare.py --tls --sizes 4KiB,64KiB,1MiB --concurrency 64 --tools wrk --no-single $(COMPARE_ARGS)

readme-table: $(STAMP) ## README's results table again, from benchmarks/results/default/results.json
	$(BIN)/zcserve report benchmarks/results/default/results.json --cell 1MiB,8 --markdown README.md

clean: ## remove .venv, the demo folder, caches and bench results
	rm -rf $(VENV) $(DEMO) .mypy_cache .pytest_cache .ruff_cache bench-results

# Plant each known defect in a copy of the tree and check the tests catch it (minutes).
mutants: $(STAMP) ## plant each known defect and check the tests catch it; MUTANTS=names
	$(BIN)/python -m tests.mutants $(MUTANTS)
