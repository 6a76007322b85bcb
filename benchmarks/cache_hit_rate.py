"""Replay a training run's logged queries through the result cache: the hit rate that run would have had.

    python benchmarks/cache_hit_rate.py runs/learn_check/run/rollouts.jsonl --index runs/learn_check/data/bm25
    python benchmarks/cache_hit_rate.py runs/search_r1_cpu/rollouts.jsonl            # mini-wiki BM25

Why: issue 16 asks for the cache's hit rate on a real training run. Every trajectory in
``rollouts.jsonl`` lists its queries in order, with its step. The rollout engine sends the n-th
search of every episode of a step to the retriever in one batched call, so the replay does the
same: per step, batch n holds the n-th query of each trajectory, in log order, through a
:class:`~ssrl_trl.retrieval.cache.CachedRetriever` over the real BM25 index (misses are real
lookups). The hit rate (queries answered without a lookup: ones stored by an earlier call plus
repeats within a call) does not depend on how queries are batched, only on their order; it is
what the cache would have served during the run, for a cache as large as ``--size``.

It prints the hit rate per step and overall (and where the hits came from), and the time the same
batches take through the bare index and through the cache, measured in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from ssrl_trl.retrieval.cache import CachedRetriever, fingerprint
from ssrl_trl.retrieval.factory import build_retriever


def step_batches(path: Path) -> dict[int, list[list[str]]]:
    """``step -> [batch of the 1st queries, batch of the 2nd queries, ...]`` from a rollout log."""
    per_step: dict[int, list[list[str]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            batches = per_step[int(row["step"])]
            for n, query in enumerate(row.get("queries") or []):
                while len(batches) <= n:
                    batches.append([])
                batches[n].append(query)
    return dict(sorted(per_step.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rollouts", type=Path, help="a run's rollouts.jsonl")
    p.add_argument("--index", default="indexes/mini_wiki_bm25", help="BM25 index the misses go to")
    p.add_argument("--k", type=int, default=3, help="documents per query (the recipe's topk)")
    p.add_argument("--size", type=int, default=10_000, help="cache entries in memory")
    p.add_argument("--sqlite", default=None, help="also persist to this SQLite file (default: memory only)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    a = p.parse_args(argv)

    steps = step_batches(a.rollouts)
    if not steps:
        print(f"{a.rollouts}: no rows", file=sys.stderr)
        return 1
    bare = build_retriever("bm25", index=a.index)
    identity = fingerprint("bm25", {"index": a.index})
    cache = CachedRetriever(bare, identity=identity, size=a.size, path=a.sqlite)

    # The bare index on the same batches first (its own timing baseline, same process), warmed up.
    bare.search(["warm up the index"], a.k)
    t0 = time.perf_counter()
    for batches in steps.values():
        for batch in batches:
            bare.search(batch, a.k)
    bare_s = time.perf_counter() - t0

    rows, cached_s = [], 0.0
    before = cache.stats()
    for step, batches in steps.items():
        t0 = time.perf_counter()
        for batch in batches:
            cache.search(batch, a.k)
        cached_s += time.perf_counter() - t0
        now = cache.stats()
        d = {key: now[key] - before[key] for key in ("queries", "misses", "stored_hits", "batch_repeats")}
        before = now
        rate = (d["queries"] - d["misses"]) / d["queries"] if d["queries"] else None
        rows.append({"step": step, **{k: int(v) for k, v in d.items()}, "hit_rate": rate})

    total = cache.stats()
    print(f"# {a.rollouts}: {len(steps)} steps, {int(total['queries'])} queries, index {a.index}, k={a.k}")
    print("| step | queries | lookups (misses) | hits from earlier calls | repeats in the call | hit rate |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = "–" if r["hit_rate"] is None else f"{r['hit_rate']:.3f}"
        print(
            f"| {r['step']} | {r['queries']} | {r['misses']} | {r['stored_hits']} | {r['batch_repeats']} | {rate} |"
        )
    print(
        f"| all | {int(total['queries'])} | {int(total['misses'])} | {int(total['stored_hits'])} | "
        f"{int(total['batch_repeats'])} | {total['hit_rate']:.3f} |"
    )
    ratio = bare_s / cached_s if cached_s > 0 else float("inf")
    print(
        f"retrieval time for these batches: bare index {bare_s * 1000:.1f} ms, through the cache "
        f"{cached_s * 1000:.1f} ms (bare / cached = {ratio:.2f}x); load {os.getloadavg()[0]:.2f}"
    )
    if a.json is not None:
        out = {
            "rollouts": str(a.rollouts),
            "index": a.index,
            "k": a.k,
            "steps": rows,
            "total": total,
            "bare_s": bare_s,
            "cached_s": cached_s,
            "load": os.getloadavg()[0],
        }
        a.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
