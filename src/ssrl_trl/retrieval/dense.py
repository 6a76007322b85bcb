"""Dense retrieval: a sentence-transformers encoder plus a faiss index over the passages.

Build (streams the corpus; only the current chunk of embeddings and, for IVF/PQ, the training
sample are in memory)::

    ssrl-trl index --corpus wiki-18.jsonl --kind dense --model intfloat/e5-base-v2 \\
        --index-type ivf --nlist 16384 --out indexes/wiki18_e5_ivf

Use in-process::

    retriever = DenseIndex.load("indexes/wiki18_e5_ivf", nprobe=64)   # the engine's Retriever

Why the options: a flat inner-product index over wiki-18 with e5-base (768 dims) needs ~62 GB of
RAM, so IVF (coarse clustering, search ``nprobe`` lists), HNSW (graph, fast but larger) and PQ
(compressed codes, ~16-64 bytes per passage) trade recall for memory. e5 models were trained with
``"query: "`` / ``"passage: "`` prefixes and lose a lot of accuracy without them; the prefixes
used at build time are saved with the index so queries always get the matching one. Embeddings
are L2-normalised and searched by inner product (cosine similarity).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .base import Doc, check_k
from .corpus import DocStore, read_index_meta, write_index_meta

__all__ = [
    "INDEX_TYPES",
    "DenseIndex",
    "Encoder",
    "default_prefixes",
    "describe_estimate",
    "estimate_index_bytes",
    "faiss_factory_string",
    "format_bytes",
]

#: the ``index_type`` names accepted by :meth:`DenseIndex.build`
INDEX_TYPES = ("flat", "ivf", "hnsw", "pq", "ivfpq")
_FAISS_FILE = "faiss.index"


class Encoder(Protocol):
    """What :class:`DenseIndex` needs from an encoder; ``SentenceTransformer`` satisfies it."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


def default_prefixes(model: str) -> tuple[str, str]:
    """(query prefix, passage prefix) a model was trained with: e5 needs them, others get none."""
    if "e5" in Path(str(model)).name.lower():
        return "query: ", "passage: "
    return "", ""


def faiss_factory_string(
    index_type: str,
    dim: int,
    *,
    nlist: int = 256,
    pq_m: int | None = None,
    pq_nbits: int = 8,
    hnsw_m: int = 32,
) -> str:
    """The ``faiss.index_factory`` description for one of :data:`INDEX_TYPES`."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown dense index type {index_type!r}; choose from {list(INDEX_TYPES)}")
    m = pq_m if pq_m is not None else _default_pq_m(dim)
    if index_type in ("pq", "ivfpq") and dim % m:
        raise ValueError(f"pq_m={m} must divide the embedding dimension {dim}")
    return {
        "flat": "Flat",
        "ivf": f"IVF{nlist},Flat",
        "hnsw": f"HNSW{hnsw_m}",
        "pq": f"PQ{m}x{pq_nbits}",
        "ivfpq": f"IVF{nlist},PQ{m}x{pq_nbits}",
    }[index_type]


_FACTORY = re.compile(
    r"^(?:IVF(?P<nlist>\d+),)?(?:(?P<flat>Flat)|PQ(?P<m>\d+)x(?P<nbits>\d+)|HNSW(?P<hnsw>\d+))$"
)


def estimate_index_bytes(factory: str, n: int, dim: int) -> dict[str, int]:
    """Bytes a faiss index of ``n`` ``dim``-d vectors needs in RAM, by part, from its factory string.

    Computed from the index's layout alone, so it can be printed before anything is read or
    built: a 21M-passage index is sized on a laptop. Parts: ``vectors`` (float32 rows or PQ
    codes), ``ids`` (IVF keeps an int64 id per vector), ``centroids`` (IVF coarse quantizer),
    ``codebooks`` (PQ), ``graph`` (HNSW links: ``2*M`` at level 0 plus ``~M/(M-1)`` upper,
    int32, and per-node level/offset). faiss adds a few bytes per list on top, and for
    ``METRIC_L2`` IVF-PQ precomputed tables (``nlist * M * 2**nbits * 4``); the dense index
    here uses inner product, which has none. ``total`` sums the parts.
    """
    match = _FACTORY.match(factory.replace(" ", ""))
    if match is None:
        raise ValueError(f"cannot estimate the size of faiss index {factory!r}; known: {list(INDEX_TYPES)}")
    if n < 0 or dim <= 0:
        raise ValueError(f"need n >= 0 and dim > 0, got n={n}, dim={dim}")
    parts = {"vectors": 0, "ids": 0, "centroids": 0, "codebooks": 0, "graph": 0}
    if match["flat"]:
        parts["vectors"] = n * dim * 4
    elif match["m"]:
        m, nbits = int(match["m"]), int(match["nbits"])
        parts["vectors"] = n * ((m * nbits + 7) // 8)
        parts["codebooks"] = (1 << nbits) * dim * 4
    else:
        hnsw_m = int(match["hnsw"])
        parts["vectors"] = n * dim * 4
        parts["graph"] = n * (4 * (2 * hnsw_m + round(hnsw_m / max(hnsw_m - 1, 1))) + 4 + 8)
    if match["nlist"]:
        parts["centroids"] = int(match["nlist"]) * dim * 4
        parts["ids"] = n * 8
    parts["total"] = sum(parts.values())
    return parts


def format_bytes(n: float) -> str:
    """``1536000000 -> '1.43 GiB'``: binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} TiB"


def describe_estimate(factory: str, n: int, dim: int) -> str:
    """One line for logs: the estimate and its largest parts."""
    est = estimate_index_bytes(factory, n, dim)
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in est.items() if k != "total" and v)
    return f"faiss {factory} over {n:,} x {dim}: estimated {format_bytes(est['total'])} in RAM ({parts})"


def _default_pq_m(dim: int) -> int:
    # 4 dims per 1-byte sub-quantizer: 96 bytes/passage for 384-d MiniLM, 192 for 768-d e5. Measured
    # on the mini corpus (benchmarks/retrieval_scale.py recall): 4 dims/code kept 0.99x of flat
    # recall@5, 8 dims/code only 0.91-0.93x; at 21M passages 96 B is 2.0 GiB, 192 B 3.9 GiB.
    for m in (dim // 4, dim // 8, 64, 48, 32, 16, 8):
        if m and dim % m == 0:
            return m
    return 1


def load_encoder(model: str, device: str | None = None) -> Any:
    """A ``SentenceTransformer`` for a hub name or local path (set ``HF_HUB_OFFLINE=1`` offline)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device=device)


class DenseIndex:
    """A faiss index, its encoder and its passage store. Create with :meth:`build` or :meth:`load`."""

    def __init__(
        self, index: Any, store: DocStore, encoder: Encoder, *, query_prefix: str = "", normalize: bool = True
    ) -> None:
        if index.ntotal != len(store):
            raise ValueError(f"faiss index has {index.ntotal} vectors but the passage store {len(store)}")
        self.index = index
        self.store = store
        self.encoder = encoder
        self.query_prefix = query_prefix
        self.normalize = normalize
        self._lock = threading.Lock()  # one encode+search at a time: torch and faiss use all cores

    @classmethod
    def build(
        cls,
        records: Iterable[tuple[str, str]],
        out_dir: str | os.PathLike[str],
        *,
        model: str,
        encoder: Encoder | None = None,
        index_type: str = "flat",
        nlist: int = 256,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        hnsw_m: int = 32,
        train_size: int = 50_000,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        normalize: bool = True,
        batch_size: int = 64,
        chunk_size: int = 1024,
        device: str | None = None,
        show_progress: bool = True,
    ) -> DenseIndex:
        """Encode ``(id, contents)`` records into ``out_dir`` and return the loaded index.

        ``model`` is saved in the index metadata (pass ``encoder`` to reuse a loaded model).
        Prefixes default to :func:`default_prefixes`. IVF/PQ are trained on the first
        ``train_size`` passages, which are then added like the rest; ``pq_m`` sub-quantizers of
        ``pq_nbits`` bits give ``pq_m * pq_nbits / 8`` bytes per passage.
        """
        import faiss

        qp, pp = default_prefixes(model)
        query_prefix = qp if query_prefix is None else query_prefix
        passage_prefix = pp if passage_prefix is None else passage_prefix
        encoder = encoder if encoder is not None else load_encoder(model, device)
        out_dir = Path(out_dir)
        texts = DocStore.write(records, out_dir)
        bar = _progress_bar(show_progress)
        embed = _embedder(encoder, passage_prefix, batch_size, normalize, bar)
        chunks = (embed(c) for c in _chunked(texts, chunk_size))
        first = next(chunks, None)
        if first is None:
            raise ValueError("cannot build a dense index from an empty corpus")
        dim = int(first.shape[1])
        factory = faiss_factory_string(
            index_type, dim, nlist=nlist, pq_m=pq_m, pq_nbits=pq_nbits, hnsw_m=hnsw_m
        )
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, first, chunks, index_type=index_type, nlist=nlist, train_size=train_size)
        if bar is not None:
            bar.close()
        faiss.write_index(index, str(out_dir / _FAISS_FILE))
        meta = {"model": str(model), "index_type": index_type, "faiss_factory": factory, "dim": dim}
        prefixes = {"query_prefix": query_prefix, "passage_prefix": passage_prefix, "normalize": normalize}
        write_index_meta(out_dir, "dense", num_docs=int(index.ntotal), **meta, **prefixes)
        return cls.load(out_dir, encoder=encoder)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        model: str | None = None,
        encoder: Encoder | None = None,
        device: str | None = None,
        mmap: bool = False,
        nprobe: int = 32,
        ef_search: int = 128,
        verbose: bool = True,
    ) -> DenseIndex:
        """Load an index built by :meth:`build`; ``verbose`` prints the RAM estimate to stderr first.

        ``model`` overrides the saved encoder name/path (e.g. the same model stored elsewhere);
        ``mmap`` maps flat/IVF vectors from disk instead of reading them into RAM; ``nprobe``
        (IVF lists visited) and ``ef_search`` (HNSW beam) trade speed for recall.
        """
        import faiss

        meta = read_index_meta(directory)
        if meta.get("kind") != "dense":
            raise ValueError(f"{directory} holds a {meta.get('kind')!r} index, not 'dense'")
        if verbose and {"faiss_factory", "num_docs", "dim"} <= meta.keys():
            # before reading anything big: a too-large index should be obvious up front
            line = describe_estimate(meta["faiss_factory"], int(meta["num_docs"]), int(meta["dim"]))
            print(f"{line}{' (memory-mapped: page cache, not private RAM)' if mmap else ''}", file=sys.stderr)
        flags = (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        index = faiss.read_index(str(Path(directory) / _FAISS_FILE), flags)
        _set_search_params(index, nprobe=nprobe, ef_search=ef_search)
        if encoder is None:
            encoder = load_encoder(model or meta["model"], device)
        return cls(
            index,
            DocStore(directory),
            encoder,
            query_prefix=meta.get("query_prefix", ""),
            normalize=meta.get("normalize", True),
        )

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"DenseIndex({self.store.directory}, {len(self)} passages)"

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        """Top ``k`` passages per query by cosine similarity (inner product of normalised vectors)."""
        import numpy as np

        k = check_k(k, len(self.store))
        if not queries:
            return []
        with self._lock:
            vecs = self.encoder.encode(
                [self.query_prefix + q for q in queries],
                batch_size=max(1, min(len(queries), 128)),
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            scores, rows = self.index.search(np.ascontiguousarray(vecs, dtype=np.float32), k)
        # faiss pads with -1 when fewer than k candidates were visited
        return self.store.hits_to_docs(rows, scores, keep=lambda row, _score: row >= 0)


def _embedder(encoder: Encoder, passage_prefix: str, batch_size: int, normalize: bool, bar: Any) -> Any:
    """``chunk of passages -> float32 vectors``, advancing the progress bar."""
    import numpy as np

    def embed(chunk: list[str]) -> Any:
        vecs = encoder.encode(
            [passage_prefix + t for t in chunk],
            batch_size=batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        if bar is not None:
            bar.update(len(chunk))
        return np.ascontiguousarray(vecs, dtype=np.float32)

    return embed


def _train_and_add(
    index: Any, first: Any, chunks: Iterator[Any], *, index_type: str, nlist: int, train_size: int
) -> None:
    """Train ``index`` if it needs it (holding only the training sample), then add every chunk."""
    import numpy as np

    pending = [first]
    if hasattr(index, "do_polysemous_training"):
        # faiss's IVF-PQ default re-orders the PQ centroids for polysemous (Hamming) filtering,
        # which search here never uses: ~75% of the training time, same neighbours without it
        index.do_polysemous_training = False
    if not index.is_trained:
        # hold only the training sample, then add it and stream the rest
        while sum(len(p) for p in pending) < train_size and (nxt := next(chunks, None)) is not None:
            pending.append(nxt)
        sample = np.concatenate(pending)
        if index_type in ("ivf", "ivfpq") and len(sample) < nlist:
            raise ValueError(
                f"IVF with nlist={nlist} needs at least {nlist} passages to train on, got {len(sample)}"
            )
        index.train(sample[:train_size])
        del sample
    for vecs in pending:
        index.add(vecs)
    del pending
    for vecs in chunks:
        index.add(vecs)


def _set_search_params(index: Any, *, nprobe: int, ef_search: int) -> None:
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search


def _chunked(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="Encode passages", unit=" passages")
