"""BM25 over a passage corpus with ``bm25s``: build once, then load memory-mapped.

Build (one streaming pass)::

    ssrl-trl index --corpus ../shared/data/corpus/mini_wiki.jsonl --kind bm25 --out indexes/mini_wiki_bm25

Use in-process::

    retriever = BM25Index.load("indexes/mini_wiki_bm25")   # the engine's Retriever
    retriever.search(["who wrote hamlet"], k=3)

Tokenisation is bm25s's (lower-case, ``\\w\\w+`` tokens, English stopwords, Snowball stemmer), the
setting the data kit's BM25 reference (150/300 of ``mini_eval`` in the top 5) was measured with.
The build is memory-bounded: the passages go straight to the on-disk :class:`~.corpus.DocStore`,
each passage's distinct terms and counts are spilled to disk, and a second pass writes the
scores into bm25s's memory-mapped sparse-matrix files, so only per-passage scalars (~32 bytes a
passage) and the vocabulary stay in RAM; the scores equal ``bm25s.BM25.index``'s (method
``lucene``). Loading maps the score matrix with ``mmap`` so several server processes share the
page cache and serving RSS stays well under the index's size on disk.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from .base import Doc, check_k
from .corpus import DocStore, read_index_meta, write_index_meta

__all__ = ["BM25Index"]

_MODEL_DIR = "bm25"


class BM25Index:
    """A saved bm25s model plus its passage store. Create with :meth:`build` or :meth:`load`."""

    def __init__(
        self,
        model: Any,
        store: DocStore,
        *,
        stopwords: str | None = "en",
        stemmer: str | None = "english",
    ) -> None:
        self.model = model
        self.store = store
        self.stopwords = stopwords
        self.stemmer_language = stemmer
        self._stemmer = _make_stemmer(stemmer)
        # PyStemmer objects are not thread-safe; one search at a time also keeps bm25s's
        # numpy work from oversubscribing the cores.
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        records: Iterable[tuple[str, str]],
        out_dir: str | os.PathLike[str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | None = "en",
        stemmer: str | None = "english",
        show_progress: bool = True,
    ) -> BM25Index:
        """Index ``(id, contents)`` records into ``out_dir`` and return the loaded index."""
        import bm25s

        out_dir = Path(out_dir)
        tokenizer = bm25s.tokenization.Tokenizer(stopwords=stopwords, stemmer=_make_stemmer(stemmer))
        texts = DocStore.write(records, out_dir)
        model_dir = out_dir / _MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        tokens = _progress(tokenizer.streaming_tokenize(texts), show_progress, "BM25 tokenize")
        counts = _spill_term_counts(tokens, model_dir)
        if counts.num_docs == 0:
            raise ValueError("cannot build a BM25 index from an empty corpus")
        vocab = tokenizer.get_vocab_dict()
        _write_score_matrix(counts, model_dir, num_terms=len(vocab), k1=k1, b=b)
        _write_bm25s_metadata(model_dir, vocab, num_docs=counts.num_docs, k1=k1, b=b)
        write_index_meta(
            out_dir,
            "bm25",
            num_docs=counts.num_docs,
            k1=k1,
            b=b,
            stopwords=stopwords,
            stemmer=stemmer,
        )
        return cls.load(out_dir)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = True) -> BM25Index:
        """Load an index built by :meth:`build`; ``mmap`` maps the score matrix instead of reading it."""
        import bm25s

        meta = read_index_meta(directory)
        if meta.get("kind") != "bm25":
            raise ValueError(f"{directory} holds a {meta.get('kind')!r} index, not 'bm25'")
        model = bm25s.BM25.load(str(Path(directory) / _MODEL_DIR), mmap=mmap, load_corpus=False)
        store = DocStore(directory)
        if len(store) != model.scores["num_docs"]:
            raise ValueError(
                f"{directory}: passage store has {len(store)} passages but the BM25 model "
                f"{model.scores['num_docs']}; rebuild the index"
            )
        return cls(model, store, stopwords=meta.get("stopwords"), stemmer=meta.get("stemmer"))

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"BM25Index({self.store.directory}, {len(self)} passages)"

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        """Top ``k`` passages per query; passages sharing no term with the query are left out."""
        import bm25s

        k = check_k(k, len(self.store))
        if not queries:
            return []
        with self._lock:
            tokens = bm25s.tokenize(
                list(queries),
                stopwords=self.stopwords,
                stemmer=self._stemmer,
                return_ids=False,
                show_progress=False,
            )
            if self.model.backend == "numpy" and self.model.nonoccurrence_array is None:
                rows, scores = _top_k_positive(self.model, tokens, k)
            else:  # numba, or a BM25 variant that scores every passage: bm25s's own top-k
                rows, scores = self.model.retrieve(tokens, k=k, show_progress=False)
        return self.store.hits_to_docs(rows, scores, keep=lambda _row, score: score > 0)


def _top_k_positive(model: Any, tokens: list[list[str]], k: int) -> tuple[list[Any], list[Any]]:
    """Per query, the rows and scores of its ``k`` best passages with a positive score, best first,
    ties to the lower row.

    Why not ``model.retrieve``: bm25s selects with ``np.argpartition`` over the whole score vector,
    which is almost all zeros (a query shares a term with few passages), and numpy's introselect
    degenerates on such ties: ~80% of a search on the mini index. Selecting among the nonzero
    scores gives the same hits (zero-score ones are dropped anyway) ~5x faster, and picks the
    same one each time where two passages tie at the k-th score."""
    import numpy as np

    rows: list[Any] = []
    scores: list[Any] = []
    for query in tokens:
        ids = model.get_tokens_ids(query)
        if not ids:
            rows.append(np.empty(0, dtype=np.int64))
            scores.append(np.empty(0, dtype=np.float32))
            continue
        score = model.get_scores_from_ids(ids)
        hit = np.flatnonzero(score > 0)
        if len(hit) > k:  # keep every passage tied with the k-th best, then order and cut
            kth = np.partition(score[hit], len(hit) - k)[len(hit) - k]
            hit = hit[score[hit] >= kth]
        best = hit[np.lexsort((hit, -score[hit]))[:k]]
        rows.append(best)
        scores.append(score[best])
    return rows, scores


# ---------------------------------------------------------------- memory-bounded build
#
# bm25s's own ``BM25.index`` holds every document's token ids plus three nnz-long arrays and an
# argsort of them (~36 bytes per (passage, term) pair: ~9 GB at 4M passages, ~45 GB at 21M). The
# build below keeps only per-passage scalars in RAM: pass 1 spills each passage's distinct terms
# and counts to disk, pass 2 streams them back in chunks and scatters the scores straight into
# memory-mapped ``.npy`` files in bm25s's CSC layout, so ``bm25s.BM25.load`` reads the result.

_SPILL_TERMS = "build_terms.tmp"
_SPILL_TFS = "build_tfs.tmp"
_SPILL_BATCH_TOKENS = 2_000_000
_FILL_CHUNK = 4_000_000


@dataclass
class _TermCounts:
    """What pass 1 keeps in RAM: per-passage length and distinct-term count, per-term df."""

    num_docs: int
    doc_len: Any  # int32 [num_docs], tokens after stopwords
    doc_nnz: Any  # int32 [num_docs], distinct terms
    doc_freq: Any  # int64 [terms seen]
    terms_path: Path
    tfs_path: Path


def _spill_term_counts(token_ids: Iterable[list[int]], work_dir: Path) -> _TermCounts:
    """Pass 1: per passage, its distinct term ids (int32) and their counts (int32) to two files."""
    import numpy as np

    terms_path, tfs_path = work_dir / _SPILL_TERMS, work_dir / _SPILL_TFS
    doc_len, doc_nnz = array("i"), array("i")
    doc_freq = np.zeros(0, dtype=np.int64)
    batch: list[list[int]] = []
    batch_tokens = 0

    def flush() -> None:
        nonlocal doc_freq
        lengths = np.fromiter((len(t) for t in batch), dtype=np.int64, count=len(batch))
        flat = np.fromiter(chain.from_iterable(batch), dtype=np.int64, count=int(lengths.sum()))
        # (local doc, term) keys sort by doc, then term: unique gives each passage's distinct terms
        keys = (np.repeat(np.arange(len(batch), dtype=np.int64), lengths) << 32) | flat
        uniq, tf = np.unique(keys, return_counts=True)
        terms = (uniq & 0xFFFFFFFF).astype(np.int32)
        nnz = np.bincount(uniq >> 32, minlength=len(batch))
        if len(terms) and int(terms.max()) >= len(doc_freq):
            doc_freq = np.concatenate([doc_freq, np.zeros(int(terms.max()) + 1 - len(doc_freq), np.int64)])
        doc_freq += np.bincount(terms, minlength=len(doc_freq))
        terms.tofile(ft)
        tf.astype(np.int32).tofile(ff)
        doc_len.extend(lengths.astype(np.int32).tolist())
        doc_nnz.extend(nnz.astype(np.int32).tolist())
        batch.clear()

    with open(terms_path, "wb") as ft, open(tfs_path, "wb") as ff:
        for ids in token_ids:
            batch.append(ids)
            batch_tokens += len(ids)
            if batch_tokens >= _SPILL_BATCH_TOKENS:
                flush()
                batch_tokens = 0
        if batch:
            flush()
    return _TermCounts(
        num_docs=len(doc_len),
        doc_len=np.frombuffer(doc_len, dtype=np.int32),
        doc_nnz=np.frombuffer(doc_nnz, dtype=np.int32),
        doc_freq=doc_freq,
        terms_path=terms_path,
        tfs_path=tfs_path,
    )


def _write_score_matrix(counts: _TermCounts, model_dir: Path, *, num_terms: int, k1: float, b: float) -> None:
    """Pass 2: Lucene-variant BM25 scores (bm25s's default ``method="lucene"``) into CSC files:
    ``indptr`` (term -> slice), ``indices`` (passage rows, ascending per term), ``data``."""
    import numpy as np
    from numpy.lib.format import open_memmap

    n = counts.num_docs
    df = np.zeros(num_terms, dtype=np.int64)
    df[: len(counts.doc_freq)] = counts.doc_freq[:num_terms]
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    avg_len = float(counts.doc_len.mean())
    norm = k1 * ((1.0 - b) + b * counts.doc_len / avg_len)  # float64 per passage
    indptr = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    nnz = int(indptr[-1])
    np.save(model_dir / "indptr.csc.index.npy", indptr)
    data = open_memmap(model_dir / "data.csc.index.npy", mode="w+", dtype=np.float32, shape=(nnz,))
    rows_out = open_memmap(model_dir / "indices.csc.index.npy", mode="w+", dtype=np.int32, shape=(nnz,))
    heads = indptr[:-1].copy()
    terms_all = np.memmap(counts.terms_path, dtype=np.int32, mode="r", shape=(nnz,)) if nnz else np.zeros(0)
    tfs_all = np.memmap(counts.tfs_path, dtype=np.int32, mode="r", shape=(nnz,)) if nnz else np.zeros(0)
    doc_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts.doc_nnz, out=doc_ptr[1:])
    d0 = 0
    while d0 < n:
        d1 = max(d0 + 1, int(np.searchsorted(doc_ptr, doc_ptr[d0] + _FILL_CHUNK, side="right")) - 1)
        d1 = min(d1, n)
        p0, p1 = int(doc_ptr[d0]), int(doc_ptr[d1])
        terms = np.asarray(terms_all[p0:p1])
        tf = np.asarray(tfs_all[p0:p1]).astype(np.float64)
        rows = np.repeat(np.arange(d0, d1, dtype=np.int32), counts.doc_nnz[d0:d1])
        scores = (idf[terms] * tf / (tf + norm[rows])).astype(np.float32)
        order = np.argsort(terms, kind="stable")  # by term, passages ascending within a term
        sorted_terms = terms[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_terms, sorted_terms, side="left")
        pos = heads[sorted_terms] + rank
        data[pos] = scores[order]
        rows_out[pos] = rows[order]
        heads += np.bincount(terms, minlength=num_terms)
        d0 = d1
    data.flush()
    rows_out.flush()
    del data, rows_out, terms_all, tfs_all
    counts.terms_path.unlink()
    counts.tfs_path.unlink()


def _write_bm25s_metadata(
    model_dir: Path, vocab: dict[str, int], *, num_docs: int, k1: float, b: float
) -> None:
    """The ``vocab.index.json`` / ``params.index.json`` pair ``bm25s.BM25.load`` expects."""
    import json

    import bm25s

    model = bm25s.BM25(k1=k1, b=b)
    params = {
        "k1": model.k1,
        "b": model.b,
        "delta": model.delta,
        "method": model.method,
        "idf_method": model.idf_method,
        "dtype": model.dtype,
        "int_dtype": model.int_dtype,
        "num_docs": num_docs,
        "version": bm25s.__version__,
        "backend": model.backend,
    }
    (model_dir / "vocab.index.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (model_dir / "params.index.json").write_text(json.dumps(params, indent=4), encoding="utf-8")


def _make_stemmer(language: str | None) -> Any:
    if language is None:
        return None
    import Stemmer  # PyStemmer: Snowball stemmers in C

    try:
        return Stemmer.Stemmer(language)
    except KeyError as e:
        raise ValueError(
            f"unknown stemmer language {language!r}; choose from {sorted(Stemmer.algorithms())}"
        ) from e


def _progress(it: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit=" passages")
