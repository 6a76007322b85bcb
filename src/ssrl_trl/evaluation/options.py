"""The flags of ``ssrl-trl eval``: the parser, the checks between flags, and which were given.

With ``--recipe`` the recipe supplies the defaults of the flags it determines (model, tag set,
environment, prompt, budgets, questions); :func:`explicit_flags` tells which flags the user typed,
so those override the recipe (:mod:`.recipe_eval`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..formats import FORMAT_CHECKS
from .signals import SIGNALS

__all__ = ["DEFAULT_MODEL", "MODES", "build_parser", "check_args", "explicit_flags"]

MODES = ("self", "retrieval", "sim2real", "hybrid")
DEFAULT_MODEL = "models/smollm2-135m-instruct"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssrl-trl eval",
        description="Evaluate a checkpoint or hub model: EM/F1 tables, pass@k, Sim2Real, hybrid search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="evaluate with a training recipe's model, tag set, environment, prompt, system prompt, "
        "response prefix and budgets (and its data.eval questions); explicit flags override them",
    )
    _model_flags(p.add_argument_group("model"))
    _data_flags(p.add_argument_group("data"))
    _method_flags(p.add_argument_group("method"))
    _sampling_flags(p.add_argument_group("sampling and budgets"))
    g = p.add_argument_group("hybrid")
    g.add_argument("--signal", default="answer_entropy", choices=SIGNALS, help="uncertainty to route on")
    g.add_argument("--hybrid-samples", type=int, default=0, help="samples for the disagreement signal")
    g.add_argument("--thresholds", default=None, help="comma-separated thresholds (default: every value)")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder")
    g.add_argument("--batch-size", type=int, default=32, help="episodes generated together")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--overwrite", action="store_true", help="discard predictions already in --out")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars")
    return p


def _model_flags(g: Any) -> None:
    g.add_argument("--model", default=DEFAULT_MODEL, help="HF folder, checkpoint or hub id")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: --model)")
    g.add_argument(
        "--baseline-model",
        default=None,
        help="also evaluate this model (e.g. the starting checkpoint) on the same questions and write a "
        "paired before/after comparison with bootstrap 95%% intervals (OUT/baseline, OUT/model, "
        "OUT/before_after.json)",
    )
    g.add_argument("--gguf-file", default=None, help="load this GGUF file from --model")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "hf", "vllm"),
        help="generator: vllm (offline engine, or --vllm-url), hf (transformers); auto: vllm if installed",
    )
    g.add_argument("--vllm-url", default=None, help="generate with this running vLLM server instead")
    g.add_argument("--vllm-memory", type=float, default=None, help="vLLM gpu_memory_utilization")
    g.add_argument("--vllm-max-model-len", type=int, default=None)
    g.add_argument("--chat-template", default=None, help="Jinja chat template file replacing the tokenizer's")


def _data_flags(g: Any) -> None:
    g.add_argument("--datasets", nargs="+", default=["mini"], help="PATH, NAME=PATH, hf:OWNER/NAME or a name")
    g.add_argument("--data-dir", type=Path, default=None, help="where bare names are looked up")
    g.add_argument("--split", default="test", help="split of hf: datasets")
    g.add_argument("--limit", type=int, default=None, help="at most this many questions per dataset")
    g.add_argument("--shuffle", action="store_true", help="take a seeded random --limit subset")


def _method_flags(g: Any) -> None:
    g.add_argument("--mode", choices=MODES, default="self")
    g.add_argument(
        "--retriever",
        default=None,
        help="bm25:INDEX, dense:INDEX, index:INDEX, http:URL or web:PROVIDER[?option=value&...]",
    )
    g.add_argument("--corpus", default=None, help="build a missing bm25:INDEX from this corpus jsonl")
    g.add_argument("--topk", type=int, default=3, help="documents per search")
    g.add_argument("--prompt-template", default=None, help="built-in name or file (default: by mode)")
    g.add_argument("--tags", default=None, help="tag set (default: search_r1 for retrieval, else ssrl)")
    g.add_argument("--system", default=None, help="optional system message")
    g.add_argument(
        "--format-check",
        default="auto",
        choices=("auto", *FORMAT_CHECKS),
        help="whose format check scores format_valid (auto: ssrl for the self-search arms of sim2real "
        "and hybrid, else the tag set's own)",
    )
    g.add_argument(
        "--response-prefix",
        default=None,
        help='forced masked opening, e.g. "<think>" (match the training recipe)',
    )


def _sampling_flags(g: Any) -> None:
    g.add_argument("--n", type=int, default=1, help="samples per question (pass@k needs n > 1)")
    g.add_argument("--k-max", type=int, default=None, help="largest k of the pass@k curve (default n)")
    g.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) if n=1, else 1.0")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=1024, help="completion budget (all turns)")
    g.add_argument("--max-turns", type=int, default=4, help="model turns with a real retriever")
    g.add_argument("--max-tokens-per-turn", type=int, default=500)
    g.add_argument("--max-obs-tokens", type=int, default=500, help="tokens of retrieved text per search")
    g.add_argument(
        "--answer-reserve-tokens", type=int, default=32, help="room kept to answer after retrieved text"
    )


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse contradictory flags (``p.error``: usage and exit 2) and fill the derived defaults."""
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    if a.k_max is not None and not 1 <= a.k_max <= a.n:
        p.error(f"--k-max={a.k_max} must lie in [1, --n={a.n}]: pass@k needs n >= k samples")
    if a.mode != "self" and a.retriever is None and a.recipe is None:
        p.error(f"--mode {a.mode} needs --retriever (bm25:INDEX or http:URL)")
    if a.mode == "hybrid" and a.n != 1:
        p.error(
            "--mode hybrid routes one answer per question; use --n 1 (and --hybrid-samples for disagreement)"
        )
    if a.signal == "disagreement" and a.hybrid_samples < 2:
        a.hybrid_samples = 5
    if a.batch_size < 1 or a.topk < 1 or a.max_new_tokens < 1:
        p.error("--batch-size, --topk and --max-new-tokens must be >= 1")
    if a.temperature is None:
        a.temperature = 0.0 if a.n == 1 else 1.0
    if a.n > 1 and a.temperature == 0:
        p.error("--n > 1 with --temperature 0 gives n identical greedy samples; set a temperature")
    if a.backend == "vllm" and a.gguf_file and not a.vllm_url:
        p.error("--backend vllm cannot load --gguf-file here: convert it first (ssrl-trl convert-gguf)")
    if a.backend == "hf" and a.vllm_url:
        p.error("--vllm-url needs --backend vllm (or auto)")


def explicit_flags(argv: list[str]) -> set[str]:
    """The destinations of the flags present in ``argv``: ``argv`` is parsed into a namespace whose
    every attribute already holds a marker, which argparse keeps wherever no flag was given."""
    parser, marker = build_parser(), object()
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), marker))
    return {k for k, v in vars(parser.parse_args(argv, namespace=namespace)).items() if v is not marker}
