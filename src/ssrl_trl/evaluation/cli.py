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

Modes and their arms (each arm writes ``predictions_<arm>.jsonl``; a rerun resumes):

* ``self`` — ``self``: SSRL self-search, single pass, the model writes its own information;
* ``retrieval`` — ``real``: Search-R1 loop with the retriever (Search-R1 prompt and tags);
* ``sim2real`` — ``self`` and ``real``: the self-search prompt both times, the second with the
  information blocks supplied by the retriever (generation stops at the closing search tag);
* ``hybrid`` — the two Sim2Real arms (plus ``self_samples`` for the disagreement signal), then a
  threshold sweep routing uncertain questions to real search.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .passk import k_grid
from .signals import SIGNALS

__all__ = ["build_parser", "main", "parse_retriever"]

MODES = ("self", "retrieval", "sim2real", "hybrid")
DEFAULT_MODEL = "models/smollm2-135m-instruct"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssrl-trl eval",
        description="Evaluate a checkpoint or hub model: EM/F1 tables, pass@k, Sim2Real, hybrid search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
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
    g = p.add_argument_group("data")
    g.add_argument("--datasets", nargs="+", default=["mini"], help="PATH, NAME=PATH, hf:OWNER/NAME or a name")
    g.add_argument("--data-dir", type=Path, default=None, help="where bare names are looked up")
    g.add_argument("--split", default="test", help="split of hf: datasets")
    g.add_argument("--limit", type=int, default=None, help="at most this many questions per dataset")
    g.add_argument("--shuffle", action="store_true", help="take a seeded random --limit subset")
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=MODES, default="self")
    g.add_argument("--retriever", default=None, help="bm25:INDEX, dense:INDEX, index:INDEX or http:URL")
    g.add_argument("--corpus", default=None, help="build a missing bm25:INDEX from this corpus jsonl")
    g.add_argument("--topk", type=int, default=3, help="documents per search")
    g.add_argument("--prompt-template", default=None, help="built-in name or file (default: by mode)")
    g.add_argument("--tags", default=None, help="tag set (default: search_r1 for retrieval, else ssrl)")
    g.add_argument("--system", default=None, help="optional system message")
    g.add_argument(
        "--format-check",
        default="auto",
        choices=("auto", "search_r1", "ssrl", "r1_searcher"),
        help="whose format check scores format_valid (auto: ssrl for self-search arms and sim2real, "
        "else by tag set)",
    )
    g.add_argument(
        "--response-prefix",
        default=None,
        help='forced masked opening, e.g. "<think>" (match the training recipe)',
    )
    g = p.add_argument_group("sampling and budgets")
    g.add_argument("--n", type=int, default=1, help="samples per question (pass@k needs n > 1)")
    g.add_argument("--k-max", type=int, default=None, help="largest k of the pass@k curve (default n)")
    g.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) if n=1, else 1.0")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=1024, help="completion budget (all turns)")
    g.add_argument("--max-turns", type=int, default=4, help="model turns with a real retriever")
    g.add_argument("--max-tokens-per-turn", type=int, default=500)
    g.add_argument("--max-obs-tokens", type=int, default=500, help="tokens of retrieved text per search")
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


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    if a.k_max is not None and not 1 <= a.k_max <= a.n:
        p.error(f"--k-max={a.k_max} must lie in [1, --n={a.n}]: pass@k needs n >= k samples")
    if a.mode != "self" and a.retriever is None:
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


def parse_retriever(spec: str, corpus: str | None = None):
    """``bm25:INDEX`` / ``dense:INDEX`` / ``index:INDEX`` / ``http:URL`` (or a bare http(s) URL).

    Anything wrong with the spec, the index or the corpus is a :class:`~ssrl_trl.errors.UserError`
    naming ``--retriever`` (the CLI prints it as one ``error:`` line)."""
    from ..errors import UserError

    try:
        return _open_retriever(spec, corpus)
    except (ValueError, OSError) as exc:
        raise UserError(f"--retriever {spec}: {exc}") from None


def _open_retriever(spec: str, corpus: str | None):
    from ..retrieval.factory import build_retriever

    kind, sep, rest = spec.partition(":")
    if kind in ("http", "https") and rest.startswith("//"):
        return build_retriever("http", url=spec)
    if not sep or not rest:
        raise ValueError("expected KIND:TARGET, e.g. bm25:indexes/mini_wiki_bm25 or http://127.0.0.1:8000")
    if kind == "http":
        return build_retriever("http", url=rest)
    if kind == "bm25" and not Path(rest).exists():
        if corpus is None:
            raise FileNotFoundError(f"BM25 index {rest} is missing; build it or pass --corpus to build it")
        from ..retrieval.bm25 import BM25Index
        from ..retrieval.corpus import iter_corpus

        print(f"[eval] building BM25 index {rest} from {corpus}", file=sys.stderr)
        BM25Index.build(iter_corpus(corpus), rest)
    return build_retriever(kind, index=rest)


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


def build_arms(a: argparse.Namespace, tokenizer: Any, retriever: Any = None) -> list:
    """The arms of ``a.mode`` (see the module docstring)."""
    from ..environments import RetrievalEnv, SelfSearchEnv
    from ..prompts import load_template
    from ..protocol import get_tag_set
    from ..rollout import Budgets, SamplingConfig
    from .runner import Arm

    real_mode = a.mode == "retrieval"
    tags = get_tag_set(a.tags or ("search_r1" if real_mode else "ssrl"))
    template = load_template(a.prompt_template or ("search_r1" if real_mode else "ssrl"))
    sampling = SamplingConfig(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k)
    single = Budgets(
        max_turns=1, max_tokens_per_turn=a.max_new_tokens, max_completion_tokens=a.max_new_tokens
    )
    multi = Budgets(
        max_turns=a.max_turns,
        max_tokens_per_turn=min(a.max_tokens_per_turn, a.max_new_tokens),
        max_obs_tokens=a.max_obs_tokens,
        max_completion_tokens=a.max_new_tokens,
    )
    common = {"template": template, "n": a.n, "system": a.system, "response_prefix": a.response_prefix}
    self_check = "ssrl" if a.format_check == "auto" else a.format_check
    real_check = a.format_check
    if real_check == "auto":
        real_check = ("r1_searcher" if tags.name == "r1_searcher" else "search_r1") if real_mode else "ssrl"
    arms = []
    if a.mode != "retrieval":
        arms.append(
            Arm(
                "self",
                SelfSearchEnv(tags),
                budgets=single,
                sampling=sampling,
                signals=True,
                format_check=self_check,
                **common,
            )
        )
    if a.mode != "self":
        env = RetrievalEnv(retriever, tokenizer, tags, topk=a.topk)
        arms.append(
            Arm(
                "real",
                env,
                budgets=multi,
                sampling=sampling,
                describe={"retriever": a.retriever, "topk": a.topk},
                format_check=real_check,
                **common,
            )
        )
    if a.mode == "hybrid" and a.hybrid_samples > 1:
        hot = SamplingConfig(temperature=a.temperature or 1.0, top_p=a.top_p, top_k=a.top_k)
        arms.append(
            Arm(
                "self_samples",
                SelfSearchEnv(tags),
                template=template,
                budgets=single,
                sampling=hot,
                n=a.hybrid_samples,
                system=a.system,
                response_prefix=a.response_prefix,
                format_check=self_check,
            )
        )
    return arms


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
    a = parser.parse_args(argv)
    _check_args(parser, a)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if a.baseline_model:
        return _compare_models(a, argv_list)
    evaluate(a, argv_list)
    return 0


def _compare_models(a: argparse.Namespace, argv: list[str]) -> int:
    """Evaluate ``--baseline-model`` and ``--model`` with identical settings, then compare them
    question by question (see :mod:`.compare`)."""
    import copy
    import gc

    from .compare import compare_records, format_line, write_comparison

    out = a.out
    base = copy.copy(a)
    base.model, base.out = a.baseline_model, out / "baseline"
    before = evaluate(base, argv)
    gc.collect()
    a.out = out / "model"
    after = evaluate(a, argv)
    arms = [arm for arm in after if arm in before and arm != "self_samples"]
    for arm in arms:
        result = compare_records(before[arm], after[arm], seed=a.seed)
        result.update({"before_model": a.baseline_model, "after_model": a.model, "arm": arm})
        where = out if len(arms) == 1 else out / f"compare_{arm}"
        path = write_comparison(where, result, title=f"{arm}: {a.baseline_model} -> {a.model}")
        for metric in ("em", "f1", "format_valid", "answered"):
            print(format_line(result, metric, label=arm))
        print(f"[eval] wrote {path}", file=sys.stderr)
    return 0


def evaluate(a: argparse.Namespace, argv: list[str]) -> dict[str, list[dict]]:
    """One model: every arm of ``a.mode`` (resumed where possible), tables, curves; returns the
    records per arm."""
    from .data import load_eval_items
    from .report import jsonable, summarize, write_summary

    items = load_eval_items(
        a.datasets, data_dir=a.data_dir, split=a.split, limit=a.limit, shuffle=a.shuffle, seed=a.seed
    )
    retriever = parse_retriever(a.retriever, a.corpus) if a.mode != "self" else None
    t0 = time.perf_counter()
    model, tok, backend = _load(a)
    a.out.mkdir(parents=True, exist_ok=True)
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
