"""BM25 over a passage corpus with ``bm25s``: build once, then load memory-mapped.

Build (one streaming pass)::

    ssrl-trl index --corpus ../shared/data/corpus/mini_wiki.jsonl --kind bm25 --out indexes/mini_wiki_bm25

Use in-process::

    retriever = BM25Index.load("indexes/mini_wiki_bm25")   # the engine's Retriever
    retriever.search(["who wrote hamlet"], k=3)

Tokenisation is bm25s's (lower-case, ``\\w\\w+`` tokens, English stopwords, Snowball stemmer), the
setting the data kit's BM25 reference (150/300 of ``mini_eval`` in the top 5) was measured with.
While building, only the token ids (4 bytes per token, in compact arrays) and the vocabulary are
in memory; the passages go straight to the on-disk :class:`~.corpus.DocStore`. Loading maps the
sparse score matrix with ``mmap`` so several server processes share the page cache.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterable
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
        token_ids: list[array] = []
        for ids in _progress(tokenizer.streaming_tokenize(texts), show_progress, "BM25 tokenize"):
            token_ids.append(array("i", ids))
        if not token_ids:
            raise ValueError("cannot build a BM25 index from an empty corpus")
        model = bm25s.BM25(k1=k1, b=b)
        model.index((token_ids, tokenizer.get_vocab_dict()), show_progress=show_progress)
        del token_ids
        model.save(str(out_dir / _MODEL_DIR))
        write_index_meta(
            out_dir,
            "bm25",
            num_docs=model.scores["num_docs"],
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
            rows, scores = self.model.retrieve(tokens, k=k, show_progress=False)
        return self.store.hits_to_docs(rows, scores, keep=lambda _row, score: score > 0)


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
