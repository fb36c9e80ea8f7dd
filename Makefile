# Every target creates .venv with python3 if it is missing; nothing else is assumed installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest test-faults soak bench-micro helm-check clean

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

# Fault injection under load with real processes (issue 7); the table goes to tests/faults/last_run.md.
test-faults: $(STAMP)
	$(BIN)/pytest -m faults tests/faults -q -o addopts='' -p no:randomly -s

# Long steady load over mock vLLM replicas, watching the router's memory; not part of CI.
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

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

bench-micro: $(STAMP)
	$(BIN)/python -m bench.micro_route

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
