"""``ssrl-trl eval``: EM / cover-EM / F1 tables, pass@k curves, Sim2Real and hybrid search.

    # greedy self-search on the seven benchmarks (names resolved in --data-dir)
    ssrl-trl eval --model runs/ssrl/checkpoint-500 --datasets nq triviaqa popqa hotpotqa \\
        2wikimultihopqa musique bamboogle --mode self --out runs/eval/ssrl
    # pass@k, k = 1..1024, batched 64 episodes at a time
    ssrl-trl eval --model M --datasets nq --limit 100 --n 1024 --temperature 1.0 --out runs/eval/passk
    # Sim2Real: the same self-search policy and prompt, <information> from a BM25 index
    ssrl-trl eval --model M --datasets mini --mode sim2real --retriever bm25:indexes/mini_wiki_bm25
    # hybrid: self-search first, real search only where the answer entropy is high
    ssrl-trl eval --model M --datasets mini --mode hybrid --retriever http://127.0.0.1:8000
    # what a recipe trains: its model, environment, prompt and budgets, on its data.eval questions
    ssrl-trl eval --recipe recipes/cpu/search_r1_smollm2.yaml --model runs/search_r1_cpu

The arms of each mode are described in :mod:`.arms`; ``--recipe`` in :mod:`.recipe_eval`; the
flags in :mod:`.options`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .arms import build_arms, parse_retriever
from .options import build_parser, explicit_flags
from .options import check_args as _check_args
from .passk import k_grid
from .signals import SIGNALS

__all__ = ["build_arms", "build_parser", "main", "parse_retriever"]


def backend_kind(a: argparse.Namespace) -> str:
    """``hf`` or ``vllm``: ``auto`` picks vLLM when it is installed (and the model is not a GGUF)."""
    if a.backend != "auto":
        return a.backend
    if a.vllm_url:
        return "vllm"
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None and not a.gguf_file else "hf"


def _load(a: argparse.Namespace):
    import torch

    from ..models import load_model, load_tokenizer
    from ..rollout import HFBackend

    tok = load_tokenizer(
        a.tokenizer or a.model,
        gguf_file=None if a.tokenizer else a.gguf_file,
        trust_remote_code=a.trust_remote_code,
        chat_template=a.chat_template,
    )
    if backend_kind(a) == "vllm":
        return _load_vllm(a, tok)
    model = load_model(a.model, dtype=a.dtype, gguf_file=a.gguf_file, trust_remote_code=a.trust_remote_code)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    model.to(device).eval()
    return model, tok, HFBackend(model, tok, batch_size=a.batch_size)


def _load_vllm(a: argparse.Namespace, tok: Any):
    """vLLM generates; the HF model is loaded too only where entropy signals need it (hybrid)."""
    from ..models import load_model
    from ..rollout import VLLMBackend, VLLMServerBackend

    if a.vllm_url:
        backend: Any = VLLMServerBackend(a.vllm_url, tok, max_concurrency=max(a.batch_size, 1))
    else:
        from ..rollout.vllm_backend import build_llm

        llm = build_llm(
            a.model,
            tokenizer=a.tokenizer,
            dtype=a.dtype,
            gpu_memory_utilization=a.vllm_memory,
            max_model_len=a.vllm_max_model_len,
            seed=a.seed,
            trust_remote_code=a.trust_remote_code,
        )
        backend = VLLMBackend(llm, tok)
    model = None
    if a.mode == "hybrid":
        model = load_model(a.model, dtype="float32", trust_remote_code=a.trust_remote_code).eval()
    return model, tok, backend


def _passk(a, out: Path, arm: str, records: list[dict]) -> dict:
    from .report import passk_curves, plot_passk, plot_passk_datasets, write_passk

    ks = k_grid(min(int(r["n"]) for r in records), a.k_max)
    curves = {m: passk_curves(records, ks, m) for m in ("em", "cover_em")}
    print(write_passk(out, arm, ks, curves))
    for ds in curves["em"]:
        plot_passk(
            out / f"passk_{arm}_{_slug(ds)}.png",
            ks,
            {m: c[ds] for m, c in curves.items()},
            f"pass@k, {arm}: {ds} (n={a.n})",
        )
    plot_passk_datasets(out / f"passk_{arm}.png", ks, curves["em"], f"pass@k (EM), {arm}, n={a.n}")
    return {"k": ks, "curves": curves}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _hybrid(a, out: Path, records: dict[str, list[dict]]) -> dict:
    from .hybrid import hybrid_sweep, oracle_point, uncertainties
    from .report import plot_hybrid, write_hybrid

    self_recs, real_recs = records["self"], records["real"]
    samples = {r["id"]: r for r in records.get("self_samples", [])} or None
    names = sorted({k for r in self_recs for k in (r.get("signals") or {})})
    names = [a.signal] + [s for s in names if s != a.signal and s in SIGNALS]
    if samples and a.signal != "disagreement":
        names.append("disagreement")
    thresholds = [float(t) for t in a.thresholds.split(",")] if a.thresholds else None
    sweeps = {}
    for name in names:
        unc = uncertainties(self_recs, name, samples)
        sweeps[name] = hybrid_sweep(self_recs, real_recs, unc, thresholds if name == a.signal else None)
    n = len(self_recs)
    refs = {
        "self only": hybrid_sweep(self_recs, real_recs, {r["id"]: 0.0 for r in self_recs}, [math.inf])[0],
        "real only": hybrid_sweep(self_recs, real_recs, {r["id"]: 1.0 for r in self_recs}, [-math.inf])[0],
        "oracle": oracle_point(self_recs, real_recs),
    }
    print(write_hybrid(out, sweeps, refs))
    plot_hybrid(out / "hybrid.png", sweeps, refs)
    return {"questions": n, "primary_signal": a.signal, "reference": refs, "sweeps": sweeps}


def run_arms(a: argparse.Namespace, arms: list, items: list, model, tok, backend) -> tuple[dict, dict]:
    """Records per arm (resumed where possible) and what each arm cost."""
    from .runner import run_arm

    records, timings = {}, {}
    for arm in arms:
        res = run_arm(
            arm, items, backend, tok, a.out, batch_size=a.batch_size, seed=a.seed, model=model,
            progress=a.progress, overwrite=a.overwrite,
        )  # fmt: skip
        records[arm.name] = res.records
        timings[arm.name] = {
            "new_questions": res.new_questions,
            "seconds": round(res.seconds, 2),
            "generated_tokens": res.generated_tokens,
            "tokens_per_s": round(res.generated_tokens / res.seconds, 1) if res.new_questions else None,
            "all_runs": res.total,
        }
    return records, timings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv_list = sys.argv[1:] if argv is None else list(argv)
    a = parser.parse_args(argv_list)
    parts = None
    if a.recipe is not None:
        from .recipe_eval import apply_recipe

        parts = apply_recipe(a, explicit_flags(argv_list))
    _check_args(parser, a)
    if a.baseline_model:
        return _compare_models(a, argv_list, parts)
    evaluate(a, argv_list, parts)
    return 0


def _compare_models(a: argparse.Namespace, argv: list[str], parts: Any = None) -> int:
    """Evaluate ``--baseline-model`` and ``--model`` with identical settings, then compare them
    question by question (see :mod:`.compare`)."""
    import copy
    import gc

    from .compare import compare_records, format_line, write_comparison

    out = a.out
    base = copy.copy(a)
    base.model, base.out = a.baseline_model, out / "baseline"
    before = evaluate(base, argv, parts)
    gc.collect()
    a.out = out / "model"
    after = evaluate(a, argv, parts)
    arms = [arm for arm in after if arm in before and arm != "self_samples"]
    from ..machine import describe_machine

    machine = describe_machine()  # sampled (not greedy) arms depend on the CPU's instruction set
    for arm in arms:
        result = compare_records(before[arm], after[arm], seed=a.seed)
        result.update(
            {"before_model": a.baseline_model, "after_model": a.model, "arm": arm, "machine": machine}
        )
        where = out if len(arms) == 1 else out / f"compare_{arm}"
        path = write_comparison(where, result, title=f"{arm}: {a.baseline_model} -> {a.model}")
        for metric in ("em", "f1", "format_valid", "answered"):
            print(format_line(result, metric, label=arm))
        print(f"[eval] wrote {path}", file=sys.stderr)
    return 0


def evaluate(a: argparse.Namespace, argv: list[str], parts: Any = None) -> dict[str, list[dict]]:
    """One model: every arm of ``a.mode`` (resumed where possible), tables, curves; returns the
    records per arm. ``parts``: a recipe's assembly (``--recipe``), whose environment is the arm's."""
    from .data import load_eval_items
    from .report import jsonable, summarize, write_summary

    items = load_eval_items(
        a.datasets, data_dir=a.data_dir, split=a.split, limit=a.limit, shuffle=a.shuffle, seed=a.seed
    )
    retriever = parse_retriever(a.retriever, a.corpus) if a.mode != "self" and parts is None else None
    t0 = time.perf_counter()
    model, tok, backend = _load(a)
    a.out.mkdir(parents=True, exist_ok=True)
    if parts is not None:
        from .recipe_eval import recipe_arms

        arms = recipe_arms(a, parts, tok)
    else:
        arms = build_arms(a, tok, retriever)
    names = [arm.name for arm in arms]
    print(f"[eval] {len(items)} questions, mode {a.mode}, arms {names} -> {a.out}", file=sys.stderr)
    load_s = round(time.perf_counter() - t0, 2)
    records, timings = run_arms(a, arms, items, model, tok, backend)
    timings["model_load_s"] = load_s
    meta = {
        "argv": argv,
        "args": vars(a),
        "backend": type(backend).__name__,
        "timings": timings,
    }
    stats = getattr(retriever, "stats", None)
    if callable(stats):  # a cached or web retriever: hits, requests and cost of this evaluation
        meta["retriever_stats"] = stats()
        print(f"[eval] retriever: {meta['retriever_stats']}", file=sys.stderr)
    summaries = {name: summarize(recs) for name, recs in records.items() if name != "self_samples"}
    print(write_summary(a.out, summaries, meta))
    extra = {}
    if a.n > 1:
        extra["passk"] = {name: _passk(a, a.out, name, records[name]) for name in summaries}
    if a.mode == "hybrid":
        extra["hybrid"] = _hybrid(a, a.out, records)
    if extra:
        (a.out / "curves.json").write_text(json.dumps(jsonable(extra), indent=2) + "\n", encoding="utf-8")
    print(f"[eval] wrote {a.out}: summary.md/.csv/.json; timings {json.dumps(timings)}", file=sys.stderr)
    return records


if __name__ == "__main__":
    sys.exit(main())
