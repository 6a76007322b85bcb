"""BM25Index.search selects its top k among the nonzero scores (bm25.py's ``_top_k_positive``) instead
of calling bm25s's ``retrieve``: the hits must be bm25s's own, on the whole mini corpus and the 300
mini_eval questions, for several k. Only where passages tie at the k-th score may the pick differ
(bm25s's is arbitrary there); ours is the lower row, every time."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from ssrl_trl.retrieval.bm25 import BM25Index
from ssrl_trl.retrieval.corpus import iter_corpus

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "corpus" / "mini_wiki.jsonl"
MINI_EVAL = DATA / "qa" / "mini_eval.jsonl"

pytestmark = pytest.mark.skipif(not CORPUS.is_file(), reason=f"shared data kit not found at {DATA}")

ODD = ["", "the of and", "zzzqqqxx", "war war war", "Paris " * 40, "who?"]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> BM25Index:
    return BM25Index.build(iter_corpus(CORPUS), tmp_path_factory.mktemp("bm25"), show_progress=False)


def _bm25s_hits(index: BM25Index, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
    """bm25s's own retrieve, zero-score hits dropped as BM25Index drops them."""
    tokens = bm25s.tokenize(
        queries, stopwords=index.stopwords, stemmer=index._stemmer, return_ids=False, show_progress=False
    )
    rows, scores = index.model.retrieve(tokens, k=k, show_progress=False)
    return [
        [(int(r), float(s)) for r, s in zip(row, score, strict=True) if s > 0]
        for row, score in zip(rows, scores, strict=True)
    ]


@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_search_returns_bm25s_hits(index: BM25Index, k: int) -> None:
    assert index.model.backend == "numpy" and index.model.nonoccurrence_array is None  # the fast path
    questions = [json.loads(line)["question"] for line in MINI_EVAL.read_text().splitlines() if line.strip()]
    queries = questions + ODD
    ours = index.search(queries, k)
    ref = _bm25s_hits(index, queries, k)
    row_of = {index.store.get(row)[0]: row for hits in ref for row, _ in hits}
    tied = 0
    for query, docs, hits in zip(queries, ours, ref, strict=True):
        assert [d.score for d in docs] == [s for _, s in hits], query  # same scores, same order
        rows = [row_of.get(d.id) for d in docs]
        if rows == [r for r, _ in hits]:
            continue
        # a different pick or order is only allowed among passages of equal score: there ours
        # are in row order, and at the k-th score they are the lowest rows with that score
        tokens = bm25s.tokenize(
            [query], stopwords=index.stopwords, stemmer=index._stemmer, show_progress=False, return_ids=False
        )[0]
        full = index.model.get_scores(tokens)
        for score in {s for _, s in hits}:
            ours_at = [d.id for d in docs if d.score == score]
            theirs_at = [r for r, s in hits if s == score]
            lowest = [int(r) for r in np.flatnonzero(full == np.float32(score))[: len(theirs_at)]]
            assert ours_at == [index.store.get(r)[0] for r in lowest], query
            if score > hits[-1][1]:  # wholly inside the top k: the same passages
                assert sorted(theirs_at) == lowest, query
        tied += 1
    assert tied < len(queries) // 4  # the mini corpus has near-duplicate passages, yet most match outright
    assert ours[len(questions) :][:3] == [[], [], []]  # no known term: no hits


def test_ties_go_to_the_lower_row_every_time(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": f"d{i}", "contents": f"T{i}\nfiller words number {i}"} for i in range(40)]
    for i in (7, 23, 31, 35):  # four identical passages: equal scores
        rows[i]["contents"] = "Twin\nthe quick brown fox jumps"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = BM25Index.build(iter_corpus(corpus), tmp_path / "idx", show_progress=False)
    for _ in range(3):
        docs = index.search(["quick brown fox"], 2)[0]
        assert [d.id for d in docs] == ["d7", "d23"] and docs[0].score == docs[1].score > 0
    assert [d.id for d in index.search(["quick fox"], 10)[0]] == ["d7", "d23", "d31", "d35"]
