# Every target creates .venv with python3 if it is missing; nothing else is assumed installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest bench bench-quick bench-micro helm-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check router bench tests
	$(BIN)/ruff format --check router bench tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

# Offline checks of the Helm chart and the Grafana dashboard (deploy/check.py); no cluster needed.
DEPLOY_STAMP := $(VENV)/.installed-deploy

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench,deploy]'
	touch $(DEPLOY_STAMP)

helm-check: $(DEPLOY_STAMP)
	$(BIN)/ruff check deploy
	$(BIN)/ruff format --check deploy
	$(BIN)/mypy deploy/check.py
	$(BIN)/hadolint Dockerfile
	$(BIN)/python deploy/check.py

# The main benchmark (docs/benchmark.md): 4 CPU mock replicas, 4 policies, ~6 minutes; results in
# bench/results/latest/. BENCH_ARGS passes more flags, e.g. BENCH_ARGS='--replicas URL,URL'.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The same at smoke size (2 mocks, small workload, 10 s per policy).
bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

bench-micro: $(STAMP)
	$(BIN)/python -m bench.micro_route

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
