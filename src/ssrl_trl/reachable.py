"""Questions a retriever can answer: keep those whose gold answer is in the top-k passages.

On a small corpus most questions of a QA set cannot be answered by searching it (the data kit's
9,998-passage ``mini_wiki`` holds a passage with the answer in BM25's top 5 for 8 % of NQ dev),
and training on them teaches nothing but guessing. ``make train-search-r1`` therefore trains and
evaluates on the reachable part, chosen by one reproducible rule:

    a question is *reachable* when one of the retriever's top-``k`` passages for the question
    itself contains a gold answer as whole words (both normalised as in scoring), and that
    answer is not yes/no —

the criterion of the data kit's own BM25 reference (``MANIFEST.md``), tightened in two ways. A
plain substring test (FlashRAG's cover-EM) calls "no" reachable in any passage with "not" or
"known", and "1" in any with "1924": with it, 612 of the 1,270 questions first selected for
training were yes/no comparisons ("Are the directors of X and Y from the same country?"), whose
answer no passage states, against 1 of 133 held-out questions. A yes/no answer has to be
inferred, not copied, so it is never one search away. The rule says the answer is one search
away, not that the model will find it (its own queries may differ from the question).

    ssrl-trl select-reachable --index indexes/mini_wiki_bm25 --k 3 --out runs/data/reachable_train.jsonl \\
        ../shared/data/qa/r1searcher_stage_2_train.jsonl ../shared/data/qa/hotpotqa_hipporag_train100.jsonl

Rows are written unchanged (FlashRAG jsonl), in input order; a summary per source is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .scoring import YES_NO_ANSWERS, as_golden_list, normalize_answer

__all__ = ["is_reachable", "main", "select_reachable"]


def is_reachable(passages: Sequence[str], golden: Any) -> bool:
    """Whether a normalised gold answer occurs as whole words in a normalised passage (yes/no
    answers never do: see :data:`ssrl_trl.scoring.YES_NO_ANSWERS`)."""
    golds = [
        g for g in (normalize_answer(x) for x in as_golden_list(golden)) if g and g not in YES_NO_ANSWERS
    ]
    texts = [f" {normalize_answer(p)} " for p in passages]  # normalised text is single-spaced
    return any(f" {g} " in t for g in golds for t in texts)


def select_reachable(rows: list[dict], retriever: Any, k: int, batch: int = 256) -> list[dict]:
    """The rows whose question's top-``k`` passages contain a gold answer, in input order."""
    keep = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        results = retriever.search([str(r["question"]) for r in chunk], k)
        for row, docs in zip(chunk, results, strict=True):
            if is_reachable([d.contents for d in docs], row.get("golden_answers", row.get("answer"))):
                keep.append(row)
    return keep


def _read(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ssrl-trl select-reachable", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", type=Path, help="FlashRAG-style QA jsonl files")
    p.add_argument("--index", required=True, help="BM25 index folder (ssrl-trl index --kind bm25)")
    p.add_argument("--corpus", default=None, help="build the index from this corpus if it is missing")
    p.add_argument("--k", type=int, default=3, help="passages the question may search (the recipe's topk)")
    p.add_argument(
        "--exclude", type=Path, action="append", default=[], help="drop questions also in these files"
    )
    p.add_argument("--limit", type=int, default=None, help="keep at most this many rows (first ones)")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    from .retrieval.base import check_k

    try:
        check_k(a.k)
        missing = [str(s) for s in [*a.sources, *a.exclude] if not s.is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        retriever = _open_index(a.index, a.corpus)
        excluded = {normalize_answer(str(r["question"])) for path in a.exclude for r in _read(path)}
        kept: list[dict] = []
        for source in a.sources:
            rows = [r for r in _read(source) if normalize_answer(str(r["question"])) not in excluded]
            chosen = select_reachable(rows, retriever, a.k)
            print(f"{source.name}: {len(chosen)}/{len(rows)} reachable in the top {a.k}")
            kept.extend(chosen)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.limit is not None:
        kept = kept[: a.limit]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w", encoding="utf-8") as fh:
        for row in kept:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(kept)} questions to {a.out}")
    return 0


def _open_index(index: str, corpus: str | None):
    from .retrieval.bm25 import BM25Index
    from .retrieval.factory import ensure_index

    ensure_index("bm25", index, corpus, quiet=True)
    return BM25Index.load(index)
