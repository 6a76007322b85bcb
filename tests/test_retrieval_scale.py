"""The pieces the 21M-passage scale path rests on (benchmarks/retrieval_scale.py measures them):

* the memory-bounded two-pass BM25 build writes exactly the score matrix ``bm25s.BM25.index``
  builds in RAM, on a synthetic corpus and on real passages, however it is chunked;
* the index loads memory-mapped (the default, and what the server uses);
* the synthetic corpus and vectors are deterministic and prefix-independent;
* ``estimate_index_bytes`` matches a real faiss index's size, and loading a dense index prints it.
"""

from __future__ import annotations

import itertools
import json
from array import array
from pathlib import Path

import bm25s
import faiss
import numpy as np
import pytest

from ssrl_trl.retrieval import bm25 as bm25_module
from ssrl_trl.retrieval.bm25 import BM25Index, _make_stemmer
from ssrl_trl.retrieval.corpus import iter_corpus
from ssrl_trl.retrieval.dense import DenseIndex, describe_estimate, estimate_index_bytes, format_bytes
from ssrl_trl.retrieval.synthetic import (
    BLOCK,
    SyntheticCorpus,
    synthetic_queries,
    synthetic_vectors,
    write_corpus,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MINI_CORPUS = DATA / "corpus" / "mini_wiki.jsonl"
MINI_EVAL = DATA / "qa" / "mini_eval.jsonl"

# passages that tokenise to nothing (empty, all stopwords) or to one repeated term
EDGE = [("e1", '"Empty"\n'), ("e2", "the of and a"), ("e3", "war war war war")]


def _reference_model(records: list[tuple[str, str]]) -> bm25s.BM25:
    """What ``BM25Index.build`` did before the two-pass build: bm25s's own in-RAM index."""
    tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=_make_stemmer("english"))
    ids = [array("i", t) for t in tokenizer.streaming_tokenize([c for _, c in records])]
    model = bm25s.BM25(k1=1.5, b=0.75)
    model.index((ids, tokenizer.get_vocab_dict()), show_progress=False)
    return model


def _synthetic_records(n: int = 2500) -> list[tuple[str, str]]:
    records = list(SyntheticCorpus(n, seed=7).records())
    return records[:1000] + EDGE + records[1000:]


def _mini_records() -> list[tuple[str, str]]:
    if not MINI_CORPUS.is_file():
        pytest.skip(f"shared data kit not found at {DATA}")
    return list(itertools.islice(iter_corpus(MINI_CORPUS), 500))


def _queries(records_name: str) -> list[str]:
    if records_name == "mini":
        rows = [json.loads(line) for line in MINI_EVAL.read_text(encoding="utf-8").splitlines() if line]
        return [r["question"] for r in rows[:100]] + ["war war", "the of"]
    return synthetic_queries(SyntheticCorpus(2500, seed=7), 100) + ["war war", "the of"]


@pytest.mark.parametrize("name", ["synthetic", "mini"])
def test_two_pass_build_equals_bm25s_index(tmp_path: Path, name: str) -> None:
    records = _synthetic_records() if name == "synthetic" else _mini_records()
    built = BM25Index.build(records, tmp_path, show_progress=False)
    ref = _reference_model(records)
    ours = built.model
    assert ours.vocab_dict == ref.vocab_dict
    assert ours.scores["num_docs"] == ref.scores["num_docs"] == len(records)
    np.testing.assert_array_equal(np.asarray(ours.scores["indptr"]), ref.scores["indptr"])
    np.testing.assert_array_equal(np.asarray(ours.scores["indices"]), ref.scores["indices"])
    # bm25s computes in float32, the two-pass build in float64 then rounds: 1 ulp apart at most
    np.testing.assert_allclose(np.asarray(ours.scores["data"]), ref.scores["data"], rtol=3e-7, atol=0)
    assert ours.method == ref.method == "lucene" and (ours.k1, ours.b) == (ref.k1, ref.b)

    # the same ranking per query: only passages within float32 noise of each other may swap
    tokens = bm25s.tokenize(
        _queries(name),
        stopwords="en",
        stemmer=_make_stemmer("english"),
        return_ids=False,
        show_progress=False,
    )
    hits = 0
    for query in tokens:
        ids = ours.get_tokens_ids(query)
        if not ids:
            continue
        got, want = ours.get_scores_from_ids(ids), ref.get_scores_from_ids(ref.get_tokens_ids(query))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        top_got, top_want = np.argsort(-got, kind="stable")[:5], np.argsort(-want, kind="stable")[:5]
        np.testing.assert_allclose(got[top_got], want[top_want], rtol=1e-6)
        hits += int((want[top_want] > 0).sum())
    assert hits > 100  # the queries do match passages: the comparison is not vacuous


def test_build_does_not_depend_on_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1M+ passages both passes run over many chunks; the files must be the one-chunk files."""
    records = _synthetic_records(1500)
    BM25Index.build(records, tmp_path / "one", show_progress=False)
    monkeypatch.setattr(bm25_module, "_SPILL_BATCH_TOKENS", 997)  # ~15 passages a spill batch
    monkeypatch.setattr(bm25_module, "_FILL_CHUNK", 1013)  # ~20 passages a fill chunk
    BM25Index.build(records, tmp_path / "many", show_progress=False)
    names = sorted(p.name for p in (tmp_path / "one" / "bm25").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "many" / "bm25").iterdir())
    assert "data.csc.index.npy" in names and not any(n.endswith(".tmp") for n in names)  # spill removed
    for n in names:
        one, many = (tmp_path / d / "bm25" / n for d in ("one", "many"))
        assert one.read_bytes() == many.read_bytes(), n


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build([], tmp_path, show_progress=False)


def test_load_memory_maps_the_score_matrix(tmp_path: Path) -> None:
    records = _synthetic_records(1200)
    BM25Index.build(records, tmp_path, show_progress=False)
    mapped = BM25Index.load(tmp_path)  # the default, and what serve-retriever uses unless --no-mmap
    assert all(isinstance(mapped.model.scores[k], np.memmap) for k in ("data", "indices"))
    in_ram = BM25Index.load(tmp_path, mmap=False)
    assert not isinstance(in_ram.model.scores["data"], np.memmap)
    queries = synthetic_queries(SyntheticCorpus(1200, seed=7), 20)
    assert mapped.search(queries, 5) == in_ram.search(queries, 5)
    assert sum(map(len, mapped.search(queries, 5))) > 20


# ---------------------------------------------------------------- synthetic corpus and vectors


def test_synthetic_corpus_is_deterministic_and_prefix_independent(tmp_path: Path) -> None:
    a = write_corpus(SyntheticCorpus(BLOCK + 300, seed=3), tmp_path / "a.jsonl")
    b = write_corpus(SyntheticCorpus(BLOCK + 300, seed=3), tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    longer = write_corpus(SyntheticCorpus(2 * BLOCK + 5, seed=3), tmp_path / "c.jsonl").read_bytes()
    assert longer.startswith(a.read_bytes())  # the first n passages do not depend on what follows
    other = list(itertools.islice(SyntheticCorpus(100, seed=4).records(), 100))
    assert other != list(itertools.islice(SyntheticCorpus(100, seed=3).records(), 100))
    rows = [json.loads(line) for line in a.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(BLOCK + 300)]
    assert synthetic_queries(SyntheticCorpus(10, seed=3), 50) == synthetic_queries(
        SyntheticCorpus(99, seed=3), 50
    )


def test_synthetic_corpus_looks_like_wiki_passages() -> None:
    corpus = SyntheticCorpus(BLOCK, seed=0)
    records = list(corpus.records())
    assert all(c.startswith('"') and '"\n' in c for _, c in records)  # FlashRAG '"Title"\ntext'
    lengths = np.array([len(c.split("\n", 1)[1].split()) for _, c in records])
    assert lengths.min() >= 10 and lengths.max() <= 110 and 70 <= lengths.mean() <= 100
    words = [w.strip(",.") for _, c in records for w in c.split("\n", 1)[1].split()]
    counts = np.array(sorted(np.unique(words, return_counts=True)[1], reverse=True))
    assert words.count("the") == counts[0]  # rank 1 is the commonest English word
    # Zipf: frequency ~ 1/rank**1.1, so rank 10 is ~12x rarer than rank 1 and rank 100 ~150x
    assert 6 < counts[0] / counts[9] < 25 and 60 < counts[0] / counts[99] < 400
    assert len(counts) > 20_000  # a long tail of rare words, as in real text


def test_synthetic_vectors_are_deterministic_normalised_slices() -> None:
    full = synthetic_vectors(2 * BLOCK + 10, dim=32, seed=5)
    assert full.shape == (2 * BLOCK + 10, 32) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        synthetic_vectors(300, dim=32, seed=5, start=BLOCK - 100), full[BLOCK - 100 : BLOCK + 200]
    )
    np.testing.assert_array_equal(synthetic_vectors(2 * BLOCK + 10, dim=32, seed=5), full)
    assert not np.array_equal(synthetic_vectors(10, dim=32, seed=6), full[:10])
    assert synthetic_vectors(0, dim=32).shape == (0, 32)


# ---------------------------------------------------------------- dense memory estimate


def _faiss_bytes(factory: str, n: int, dim: int) -> int:
    x = synthetic_vectors(n, dim, seed=1, clusters=64)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return len(faiss.serialize_index(index))


@pytest.mark.parametrize(
    ("factory", "n", "dim"),
    [
        ("Flat", 3000, 64),
        ("IVF16,PQ8x4", 4000, 64),
        ("IVF32,Flat", 3000, 64),
        ("PQ16x4", 2000, 64),
        ("HNSW16", 2000, 32),
    ],
)
def test_estimate_matches_a_real_faiss_index(factory: str, n: int, dim: int) -> None:
    """The serialised index is its in-RAM layout (vectors/codes, ids, centroids, codebooks, links)
    plus a header; the estimate is made without building anything and is within 2%."""
    actual = _faiss_bytes(factory, n, dim)
    est = estimate_index_bytes(factory, n, dim)
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    assert abs(est["total"] - actual) <= 0.02 * actual, (factory, est, actual)


def test_estimate_scales_and_rejects_unknown_layouts() -> None:
    # the figures the README quotes: flat MiniLM at 21M ~30 GiB, IVF-PQ (48 B codes + 8 B ids) ~1.1 GiB
    flat = estimate_index_bytes("Flat", 21_000_000, 384)["total"]
    assert flat == 21_000_000 * 384 * 4
    ivfpq = estimate_index_bytes("IVF16384,PQ48x8", 21_000_000, 384)
    assert ivfpq["vectors"] == 21_000_000 * 48 and ivfpq["ids"] == 21_000_000 * 8
    assert ivfpq["total"] < 1.2 * 2**30
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(12) == "12 B"
    assert format_bytes(flat) == "30 GiB"  # GiB is the largest unit: sizes stay comparable
    with pytest.raises(ValueError, match="cannot estimate"):
        estimate_index_bytes("OPQ16,IVF64,PQ16", 10, 64)
    with pytest.raises(ValueError, match="need n >= 0"):
        estimate_index_bytes("Flat", -1, 64)


class _HashEncoder:
    def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
        out = np.zeros((len(sentences), 32), dtype=np.float32)
        for i, text in enumerate(sentences):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % 32] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_dense_load_prints_the_estimate_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = list(SyntheticCorpus(600, seed=2).records())
    DenseIndex.build(
        records,
        tmp_path,
        model="hash",
        encoder=_HashEncoder(),
        index_type="ivfpq",
        nlist=8,
        pq_m=8,
        pq_nbits=4,
        show_progress=False,
    )
    capsys.readouterr()
    DenseIndex.load(tmp_path, encoder=_HashEncoder(), mmap=True)
    err = capsys.readouterr().err
    assert describe_estimate("IVF8,PQ8x4", 600, 32) in err
    assert "estimated" in err and "memory-mapped" in err
    DenseIndex.load(tmp_path, encoder=_HashEncoder(), verbose=False)
    assert capsys.readouterr().err == ""
