# `make test` is the one command CI runs (.ci/run): it builds its own environments, then runs
# lint, type checks and the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# aioresponses 0.7.9 cannot build responses on aiohttp 3.14 (aioresponses#289), so the tests that
# use it also run in a second environment pinned to the newest aiohttp 3.13.
VENV313 := .venv-aiohttp313
BIN313 := $(VENV313)/bin

.PHONY: test quick lint typecheck unit compat venv sdks demo bench clean dist

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The official Python SDK, for tests/testing/test_official_sdks.py: its hard dependency pysha3 does not
	# build on 3.11+ and is used only by a function never called, so it is installed alone.
	$(BIN)/python -m pip install -q --no-deps "phala-cloud==0.2.0"
	touch $@

# The official TypeScript SDK, for tests/testing/test_official_sdks.py, in a test-only cache; skipped
# (the test then skips, outside CI) where npm is not installed.
NPM_SDK := .cache/npm-sdk
$(NPM_SDK)/node_modules/@phala/cloud/package.json:
	if command -v npm >/dev/null; then npm install --no-audit --no-fund --prefix $(NPM_SDK) "@phala/cloud@0.2.9"; fi

sdks: $(NPM_SDK)/node_modules/@phala/cloud/package.json

$(VENV313)/.installed: pyproject.toml
	test -x $(BIN313)/python || $(PYTHON) -m venv $(VENV313)
	$(BIN313)/python -m pip install -q --upgrade pip
	$(BIN313)/python -m pip install -q -e ".[test]" "aiohttp>=3.13,<3.14"
	touch $@

lint: venv
	$(BIN)/ruff check phala_async tests benchmarks
	$(BIN)/ruff format --check phala_async tests benchmarks

typecheck: venv
	$(BIN)/mypy

unit: venv sdks
	$(BIN)/python -m pytest

compat: $(VENV313)/.installed
	PHALA_ASYNC_REQUIRE_AIORESPONSES=1 $(BIN313)/python -m pytest -m aioresponses -p no:cacheprovider

test: lint typecheck unit compat

# While iterating: the suite without the tests marked slow (soaks, long sweeps, the wheel and the
# benchmark harness). Not a substitute for `make test`.
# The slow tests (soaks, timed sweeps, process runs, the wheel) are left to `make test`.
# Four workers on two cores: most tests wait on sockets and timers, not the CPU (31 s, against
# 42 s with one worker per core).
quick: venv
	$(BIN)/python -m pytest -m "not slow" -n 4

clean:
	rm -rf $(VENV) $(VENV313) .mypy_cache .pytest_cache .ruff_cache build dist .cache

# What a release uploads: the sdist and the wheel built from it, their metadata checked by twine,
# and the wheel's file list checked against the package (tests/packaging/test_wheel.py, run as a script).
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python tests/packaging/test_wheel.py dist/*.whl

demo: venv
	$(BIN)/phala-async demo --cvms 1000

# Benchmarks run in their own environment, with the peers installed beside phala-async.
BENCH_VENV := benchmarks/.venv-bench
$(BENCH_VENV)/.installed: pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[speed]" -r benchmarks/requirements.txt
	# phala-cloud 0.2.0 hard-depends on pysha3, which does not build on 3.11+: install it alone.
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps "phala-cloud==0.2.0"
	touch $@

# BENCH_ARGS passes options on: `make bench BENCH_ARGS=--write-results` updates RESULTS.md.
BENCH_ARGS ?=
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks $(BENCH_ARGS)
