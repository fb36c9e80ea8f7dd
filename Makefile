# Every target creates .venv with python3 if it is missing; nothing else is assumed installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest run bench-micro bench-overhead helm-check clean

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

bench-micro: $(STAMP)
	$(BIN)/python -m bench.micro_route

bench-overhead: $(STAMP)
	$(BIN)/python -m bench.overhead

# make run REPLICAS=http://vllm-0:8000,http://vllm-1:8000 [PORT=8000] [ARGS='--policy session']
PORT ?= 8000
run: $(STAMP)
	@test -n "$(REPLICAS)" || { echo "usage: make run REPLICAS=http://host:8000,http://host2:8000 [PORT=8000] [ARGS=...]"; exit 2; }
	@echo "router on http://127.0.0.1:$(PORT) in front of $(REPLICAS); try:"
	@echo "  curl -N http://127.0.0.1:$(PORT)/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "    -H 'X-Session-Id: my-chat-1' -d '{\"model\": \"MODEL\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'"
	@echo "  curl http://127.0.0.1:$(PORT)/router/replicas ; curl http://127.0.0.1:$(PORT)/metrics"
	ROUTER_REPLICAS=$(REPLICAS) $(BIN)/python -m router --port $(PORT) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
