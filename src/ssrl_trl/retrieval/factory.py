"""Retriever kinds by name: the registry recipes and ``ssrl-trl eval`` name, each kind with a
typed options spec.

    build_retriever("bm25", index="indexes/mini_wiki_bm25")
    build_retriever("dense", index="indexes/mini_wiki_minilm", nprobe=64)
    build_retriever("http", url="http://127.0.0.1:8000", api="search_r1", timeout=10)
    build_retriever("index", index="indexes/whatever")      # bm25 or dense, read from its metadata
    build_retriever("memory", docs=["\\"Paris\\"\\nParis is the capital of France."])

Everything below the recipe takes a retriever object; only recipes name one. A new kind is one
module (a class with ``search(queries, k)``) plus one :func:`register_retriever` call with a
pydantic model of its options; the recipe's ``environment.retriever`` section is validated
against that model when the recipe loads. Unknown kinds and options are errors that list the
valid ones, so a typo in a YAML fails at start-up.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .base import Retriever
from .cache import CachedRetriever, CacheOptions, fingerprint
from .memory import InMemoryRetriever

__all__ = [
    "RETRIEVER_REGISTRY",
    "InMemoryRetriever",
    "RetrieverKind",
    "RetrieverOptions",
    "RetrieverSpec",
    "build_retriever",
    "check_retriever_options",
    "ensure_index",
    "load_retriever",
    "register_retriever",
    "retriever_options",
]


class RetrieverOptions(BaseModel):
    """Base of a kind's options: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


@dataclass(frozen=True)
class RetrieverKind:
    """A registered kind: its options model and the function that builds it from them."""

    name: str
    options: type[RetrieverOptions]
    build: Callable[[Any], Retriever]


#: name -> kind; add to it with :func:`register_retriever`.
RETRIEVER_REGISTRY: dict[str, RetrieverKind] = {}


def register_retriever(name: str, options: type[RetrieverOptions], build: Callable[[Any], Retriever]) -> None:
    """Make kind ``name`` available to recipes and :func:`build_retriever`."""
    RETRIEVER_REGISTRY[name] = RetrieverKind(name, options, build)


def __getattr__(name: str) -> Any:
    if name == "RETRIEVER_KINDS":  # the registered kinds, sorted (a kind may register after import)
        return tuple(sorted(RETRIEVER_REGISTRY))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def retriever_options(kind: str, options: dict[str, Any]) -> RetrieverOptions:
    """Kind ``kind``'s validated options, without building anything (a recipe is checked before
    any weights or indexes load). ``ValueError`` names the unknown kind or option and the valid ones."""
    if kind not in RETRIEVER_REGISTRY:
        raise ValueError(
            f"unknown retriever kind {kind!r}; valid kinds: {', '.join(sorted(RETRIEVER_REGISTRY))}"
        )
    model = RETRIEVER_REGISTRY[kind].options
    accepted = list(model.model_fields)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"retriever kind {kind!r} got unknown option(s) {unknown}; valid options: {accepted}"
        )
    missing = [n for n, f in model.model_fields.items() if f.is_required() and options.get(n) is None]
    if missing:
        raise ValueError(f"retriever kind {kind!r} needs option(s) {missing}")
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {_message(e)}" for e in exc.errors())
        raise ValueError(f"retriever kind {kind!r}: {problems}") from None


def _message(error: Any) -> str:
    ctx = error.get("ctx") or {}
    return str(ctx["error"]) if error["type"] == "value_error" and "error" in ctx else error["msg"]


def check_retriever_options(kind: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``options`` are valid for ``kind`` (see :func:`retriever_options`)."""
    retriever_options(kind, options)


def build_retriever(kind: str, **options: Any) -> Retriever:
    """A retriever of a registered ``kind`` built from keyword ``options``."""
    spec = retriever_options(kind, options)
    return RETRIEVER_REGISTRY[kind].build(spec)


def load_retriever(index: str | Path, **options: Any) -> Retriever:
    """The in-process retriever for an index directory, by the kind saved in its metadata.

    ``options`` go to the loader: ``mmap`` for BM25; ``model``, ``device``, ``mmap``,
    ``nprobe``, ``ef_search`` for dense. A Lucene index built by ``ssrl-trl index --kind lucene``
    loads with its own defaults (BM25 k1=0.9, b=0.4), ignoring these.
    """
    from .corpus import read_index_meta

    kind = read_index_meta(index).get("kind")
    if kind == "lucene":  # none of the bm25/dense loader options apply (the server always sends mmap)
        return build_retriever("lucene", index=index)
    if kind not in ("bm25", "dense"):
        raise ValueError(
            f"{index}: unknown index kind {kind!r} in its metadata (expected 'bm25', 'dense' or 'lucene')"
        )
    return build_retriever(kind, index=index, **options)


def ensure_index(kind: str, index: str | Path, corpus: str | Path | None, *, quiet: bool = False) -> None:
    """Build a missing BM25 index from ``corpus`` (the one build-if-missing, for training,
    evaluation and question selection alike); any other missing index is a
    ``FileNotFoundError`` saying how to build it."""
    if Path(index).exists():
        return
    if kind != "bm25" or corpus is None:
        how = " or give a corpus to build it from" if kind == "bm25" else ""
        label = "BM25" if kind == "bm25" else kind
        raise FileNotFoundError(
            f"{label} index {index} is missing; build it with `ssrl-trl index --kind {kind}`{how}"
        )
    from .bm25 import BM25Index
    from .corpus import iter_corpus

    index = Path(index)
    index.parent.mkdir(parents=True, exist_ok=True)
    # Ranks of one launch (or two runs) may reach here together: one builds under an exclusive
    # lock into a temporary folder renamed into place, so the index is complete or absent and
    # the others wait and then load it.
    with open(index.parent / f".{index.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if index.exists():
            return
        partial = index.parent / f".{index.name}.building"
        shutil.rmtree(partial, ignore_errors=True)  # left by a build that was killed
        if not quiet:
            print(f"[ssrl-trl] building BM25 index {index} from {corpus}", file=sys.stderr, flush=True)
        BM25Index.build(iter_corpus(corpus), partial, show_progress=not quiet)
        os.replace(partial, index)


class RetrieverSpec(BaseModel):
    """A recipe's ``environment.retriever`` section: a registered ``kind``, its ``index`` (built
    from ``corpus`` if missing, BM25) or ``url``, and the kind's other ``options`` — all checked
    against the kind's options model when the recipe loads — and an optional ``cache`` section
    (:class:`~.cache.CacheOptions`) that puts any kind behind the result cache."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: str = "bm25"
    index: str | None = None
    corpus: str | None = Field(None, description="build the index from this corpus if it does not exist yet")
    url: str | None = None
    options: dict[str, Any] = {}
    cache: CacheOptions | None = Field(None, description="result cache (memory LRU, optional SQLite file)")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RetrieverSpec:
        """Validate ``values`` (outside a recipe); ``ValueError`` with the first problem's message."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(map(str, err["loc"]))
            raise ValueError(f"{loc}: {_message(err)}" if loc else _message(err)) from None

    def option_values(self, resolve: Callable[[str | None], str | None] = lambda p: p) -> dict[str, Any]:
        """``options`` plus the index (resolved by ``resolve``) and the URL, as the kind takes them."""
        values = dict(self.options)
        if self.index is not None:
            values["index"] = resolve(self.index)
        if self.url is not None:
            values["url"] = self.url
        return values

    @model_validator(mode="after")
    def _check(self) -> RetrieverSpec:
        if self.kind not in RETRIEVER_REGISTRY:
            raise ValueError(
                f"unknown retriever kind {self.kind!r}; valid kinds: {', '.join(sorted(RETRIEVER_REGISTRY))}"
            )
        model = RETRIEVER_REGISTRY[self.kind].options
        for name, hint in (("url", ""), ("index", " (a directory; add corpus to build it)")):
            if (
                name in model.model_fields
                and model.model_fields[name].is_required()
                and getattr(self, name) is None
            ):
                raise ValueError(f"retriever kind {self.kind!r} needs {name}{hint}")
        retriever_options(self.kind, self.option_values())
        return self

    def build(self, resolve: Callable[[str | None], str | None] = lambda p: p) -> Retriever:
        """The retriever, building a missing BM25 index from the corpus first."""
        if self.index is not None:
            ensure_index(self.kind, resolve(self.index), resolve(self.corpus))
        values = self.option_values(resolve)
        retriever = build_retriever(self.kind, **values)
        if self.cache is None:
            return retriever
        cache = self.cache.model_copy(update={"path": resolve(self.cache.path)})
        identity = fingerprint(self.kind, retriever_options(self.kind, values).model_dump())
        return CachedRetriever.from_options(retriever, cache, identity)


# -- the built-in kinds ----------------------------------------------------------------------------
class BM25Options(RetrieverOptions):
    index: Path
    mmap: bool = True


class DenseOptions(RetrieverOptions):
    index: Path
    model: str | None = None
    device: str | None = None
    mmap: bool = False
    nprobe: int = Field(32, ge=1)
    ef_search: int = Field(128, ge=1)


class IndexOptions(DenseOptions):
    """``index``: a BM25 or dense index, whichever its metadata names; the options set are passed on."""


class HTTPOptions(RetrieverOptions):
    """``url`` (one server) or ``urls`` (replicas of one index: load spread, failover)."""

    urls: list[str] | None = Field(None, min_length=1)
    url: str | None = Field(None, validate_default=True)
    api: Literal["search_r1", "r1_searcher"] = "search_r1"
    timeout: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff: float = Field(0.5, ge=0)
    max_backoff: float = Field(8.0, ge=0)
    max_batch: int = Field(512, ge=1)
    cooloff: float = Field(2.0, gt=0)

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str] | None) -> list[str] | None:
        for url in urls or []:
            _check_http_url(url)
        if urls is not None and len(set(urls)) != len(urls):
            raise ValueError(f"urls lists a replica twice: {urls}")
        return urls

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None, info: Any) -> str | None:
        if url is None and info.data.get("urls") is None:
            if "urls" in info.data:  # not given (a bad urls has its own error)
                raise ValueError(
                    "needs url (one server) or urls (replicas): needs option(s) ['url'] or ['urls']"
                )
            return None
        if url is not None and info.data.get("urls") is not None:
            raise ValueError("give url (one server) or urls (replicas), not both")
        return url if url is None else _check_http_url(url)


def _check_http_url(url: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"retriever url must start with http:// or https:// and name a host, got {url!r}")
    return url


class MemoryOptions(RetrieverOptions):
    docs: list[Any]


def _bm25(o: BM25Options) -> Retriever:
    from .bm25 import BM25Index

    return BM25Index.load(o.index, mmap=o.mmap)


def _dense(o: DenseOptions) -> Retriever:
    from .dense import DenseIndex

    return DenseIndex.load(
        o.index, model=o.model, device=o.device, mmap=o.mmap, nprobe=o.nprobe, ef_search=o.ef_search
    )


def _http(o: HTTPOptions) -> Retriever:
    from .client import HTTPRetriever

    return HTTPRetriever(**o.model_dump(exclude_none=True))


def _index(o: IndexOptions) -> Retriever:
    return load_retriever(o.index, **o.model_dump(exclude={"index"}, exclude_unset=True))


register_retriever("bm25", BM25Options, _bm25)
register_retriever("dense", DenseOptions, _dense)
register_retriever("http", HTTPOptions, _http)
register_retriever("index", IndexOptions, _index)
register_retriever("memory", MemoryOptions, lambda o: InMemoryRetriever(o.docs))

# Kinds in their own modules register themselves on import (after the names above exist).
from . import lucene as _lucene  # noqa: E402, F401  (the "lucene" kind: Pyserini/Anserini BM25)
from . import simulated as _simulated  # noqa: E402, F401  (the "simulated" kind: ZeroSearch)
from . import web as _web  # noqa: E402, F401  (the "web" kind: web-search APIs, cached)
