"""A result cache in front of any retriever: an in-memory LRU plus an optional SQLite file.

    retriever = CachedRetriever(inner, identity=fingerprint("bm25", {"index": "indexes/x"}),
                                size=10_000, path="runs/x/cache.sqlite")

Why: GRPO samples the same question ``num_generations`` times, and the samples often send the
same query (a copied question, a name); an evaluation rerun asks the same queries again; and a
paid web-search API bills every request. The cache answers a query it has seen from memory (or
from the SQLite file, which survives restarts and is shared by the ranks and runs that name it),
and sends only the rest to the retriever it wraps.

* **Keys** are ``(identity, query, k)``. ``identity`` fingerprints the retriever (its kind and
  the options that change results, the index's metadata and modification time), so two indexes
  never share entries; a retriever whose answers follow the training schedule (it has
  ``set_training_progress``, like the simulated search engine) gets the step in its key as well.
  Queries are normalised (Unicode NFKC, surrounding and repeated whitespace; optionally case).
* **Batched**: one ``search(queries, k)`` looks every query up, sends the distinct misses to the
  wrapped retriever in **one** call, and returns the results in query order, repeats included.
  A query repeated within one call is looked up once; its repeats count as hits.
* **Only successes are stored**: when the wrapped retriever raises, the error goes to the caller
  (the environment makes it a masked error observation) and nothing is cached.
* **SQLite** runs in WAL mode with a busy timeout, so several processes read and write one file.
  A file that is not a cache (or not SQLite) fails at open with an error naming it; a read or write
  that fails later (locked past the timeout, disk full) is logged and counted, and the call goes on
  from memory and the wrapped retriever — a run never stops for its cache.

Counters (``stats()``) and a per-log window (``training_metrics()``, which
:class:`~ssrl_trl.callbacks.TrainingProgressCallback` adds to the run's logs as
``retrieval/cache_hit_rate`` and friends) tell how much the cache saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .base import Doc, Retriever, RetrieverError, check_k

__all__ = [
    "CacheError",
    "CacheOptions",
    "CachedRetriever",
    "SQLiteStore",
    "check_cache_file",
    "fingerprint",
    "normalize_query",
]

logger = logging.getLogger(__name__)

#: Bumped when the stored layout changes; a file of another version is refused, not misread.
FORMAT_VERSION = 1

#: Options that change how a retriever is reached, not what it answers: left out of identities, so
#: raising a timeout or a rate limit keeps the entries (and, for a web API, the money spent on them).
OPERATIONAL_OPTIONS = frozenset(
    {
        "timeout",
        "retries",
        "backoff",
        "max_backoff",
        "max_batch",
        "mmap",
        "device",
        "concurrency",
        "rate_limit",
        "burst",
        "price_per_1k",
        "api_key_env",
        "batch_size",
        "threads",
    }
)


class CacheError(ValueError):
    """The cache file cannot be used (not a cache, unreadable, locked at open)."""


class CacheOptions(BaseModel):
    """A recipe's ``environment.retriever.cache`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(10_000, ge=0, description="entries kept in memory (LRU); 0: none")
    path: str | None = Field(None, description="SQLite file shared by processes and runs; none: memory only")
    lowercase: bool = Field(False, description="fold case when normalising queries")
    timeout: float = Field(10.0, gt=0, description="seconds to wait for a SQLite file another process holds")


def normalize_query(query: str, lowercase: bool = False) -> str:
    """The key form of a query: NFKC, whitespace runs collapsed, ends stripped (optionally case-folded).

    >>> normalize_query("  Who  wrote\\tHamlet? ")
    'Who wrote Hamlet?'
    """
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", query)).strip()
    return text.casefold() if lowercase else text


def fingerprint(kind: str, options: dict[str, Any]) -> str:
    """A short stable identity of a retriever built from ``kind`` and ``options``.

    Options in :data:`OPERATIONAL_OPTIONS` are left out. An ``index`` directory contributes its
    resolved path, its metadata file and the modification times of its files, so a rebuilt index
    starts with an empty cache.
    """
    described: dict[str, Any] = {"kind": kind}
    for name, value in sorted(options.items()):
        if name in OPERATIONAL_OPTIONS or value is None:
            continue
        if name == "index":
            described[name] = _index_identity(Path(str(value)))
        else:
            described[name] = value
    blob = json.dumps(described, sort_keys=True, default=str, separators=(",", ":"))
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _index_identity(index: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(index.resolve())}
    if index.is_dir():
        files = sorted(p for p in index.rglob("*") if p.is_file())
        out["files"] = [(str(p.relative_to(index)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return out


# -- the persistent layer --------------------------------------------------------------------------
class SQLiteStore:
    """``(scope, query, k) -> docs`` in one SQLite file (WAL mode, busy timeout), one connection
    per process (opened again after pickling). Methods raise ``sqlite3.Error``; the cache decides
    what a failure means."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.path, self.timeout = Path(path), timeout
        self._conn = self._open()
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"result cache {self.path}: cannot create its folder: {exc}") from None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS results (scope TEXT NOT NULL, query TEXT NOT NULL, "
                "k INTEGER NOT NULL, docs TEXT NOT NULL, stored REAL NOT NULL, "
                "PRIMARY KEY (scope, query, k)) WITHOUT ROWID"
            )
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        except sqlite3.Error as exc:
            hint = (
                "another process holds it locked; raise cache.timeout or use another file"
                if "locked" in str(exc)
                else "it is not a result cache; delete it or point cache.path elsewhere"
            )
            raise CacheError(f"result cache {self.path} cannot be opened ({exc}): {hint}") from None
        if version != str(FORMAT_VERSION):
            conn.close()
            raise CacheError(
                f"result cache {self.path} has format version {version}, this ssrl-trl writes "
                f"{FORMAT_VERSION}; delete it or point cache.path elsewhere"
            )
        return conn

    def get_many(self, scope: str, queries: Sequence[str], k: int) -> dict[str, tuple[Doc, ...]]:
        found: dict[str, tuple[Doc, ...]] = {}
        for start in range(0, len(queries), 500):  # under SQLite's bound-parameter limit
            chunk = list(queries[start : start + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT query, docs FROM results WHERE scope = ? AND k = ? AND query IN ({marks})",
                    (scope, k, *chunk),
                ).fetchall()
            for query, blob in rows:
                docs = _decode(blob)
                if docs is not None:
                    found[query] = docs
        return found

    def put_many(self, scope: str, items: Iterable[tuple[str, Sequence[Doc]]], k: int) -> None:
        now = time.time()
        rows = [(scope, q, k, _encode(docs), now) for q, docs in items]
        with self._lock, self._conn:  # one transaction (BEGIN ... COMMIT) per batch
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.timeout = state["path"], state["timeout"]
        self._conn = self._open()
        self._lock = threading.Lock()


def _encode(docs: Sequence[Doc]) -> str:
    return json.dumps([[d.id, d.contents, d.score] for d in docs], ensure_ascii=False)


def _decode(blob: str) -> tuple[Doc, ...] | None:
    """The docs of a stored row; ``None`` (a miss) for a row that does not parse."""
    try:
        return tuple(Doc(str(i), str(c), None if s is None else float(s)) for i, c, s in json.loads(blob))
    except (ValueError, TypeError):
        return None


def check_cache_file(path: str | os.PathLike[str], timeout: float = 10.0) -> None:
    """Open (creating if missing) the cache file ``path`` and close it: a :class:`CacheError`
    saying what is wrong before any model loads."""
    SQLiteStore(path, timeout).close()


# -- the wrapper -----------------------------------------------------------------------------------
class CachedRetriever:
    """``inner`` behind the cache (see the module docstring). ``identity`` keys the entries: use
    :func:`fingerprint` (different retrievers must never share an identity)."""

    def __init__(
        self,
        inner: Retriever,
        *,
        identity: str,
        size: int = 10_000,
        path: str | os.PathLike[str] | None = None,
        lowercase: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.inner, self.identity, self.size, self.lowercase = inner, identity, size, lowercase
        self.store = SQLiteStore(path, timeout) if path is not None else None
        self._memory: OrderedDict[tuple[str, str, int], tuple[Doc, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._step: int | None = None
        self._totals = _Counts()
        self._window = _Counts()
        self._store_warned = False

    @classmethod
    def from_options(cls, inner: Retriever, options: CacheOptions, identity: str) -> CachedRetriever:
        """``inner`` behind a cache configured by a recipe section; an already cached retriever is
        re-wrapped (its default cache replaced), never cached twice."""
        if isinstance(inner, CachedRetriever):
            inner = inner.inner
        return cls(
            inner,
            identity=identity,
            size=options.size,
            path=options.path,
            lowercase=options.lowercase,
            timeout=options.timeout,
        )

    # -- search ----------------------------------------------------------------------------------
    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        check_k(k)
        scope = self._scope()
        keys = [normalize_query(q, self.lowercase) for q in queries]
        found: dict[str, tuple[Doc, ...]] = {}
        with self._lock:
            for key in keys:
                if key not in found and (docs := self._memory_get((scope, key, k))) is not None:
                    found[key] = docs
        hits = sum(key in found for key in keys)
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing and self.store is not None:
            stored = self._store_call(lambda: self.store.get_many(scope, missing, k), {})  # type: ignore[union-attr]
            if stored:
                with self._lock:
                    for key, docs in stored.items():
                        self._memory_put((scope, key, k), docs)
                found.update(stored)
                hits += sum(key in stored for key in keys)
                missing = [key for key in missing if key not in stored]
        if missing:
            first = {}
            for query, key in zip(queries, keys, strict=True):
                first.setdefault(key, query)
            try:
                fetched = self.inner.search([first[key] for key in missing], k)
                if len(fetched) != len(missing):
                    raise RetrieverError(
                        f"retriever returned {len(fetched)} result lists for {len(missing)} queries"
                    )
            except BaseException:
                with self._lock:
                    self._totals.errors += 1
                    self._window.errors += 1
                raise
            new = {key: tuple(docs) for key, docs in zip(missing, fetched, strict=True)}
            with self._lock:
                for key, docs in new.items():
                    self._memory_put((scope, key, k), docs)
            if self.store is not None:
                self._store_call(lambda: self.store.put_many(scope, new.items(), k), None)  # type: ignore[union-attr]
            found.update(new)
        with self._lock:
            for counts in (self._totals, self._window):
                counts.queries += len(keys)
                counts.stored_hits += hits
                counts.misses += len(missing)
        return [list(found[key]) for key in keys]

    def _scope(self) -> str:
        # A retriever that follows the training schedule answers differently at every step.
        if self._step is not None and callable(getattr(self.inner, "set_training_progress", None)):
            return f"{self.identity}@step{self._step}"
        return self.identity

    def _memory_get(self, key: tuple[str, str, int]) -> tuple[Doc, ...] | None:
        docs = self._memory.get(key)
        if docs is not None:
            self._memory.move_to_end(key)
        return docs

    def _memory_put(self, key: tuple[str, str, int], docs: tuple[Doc, ...]) -> None:
        if self.size == 0:
            return
        self._memory[key] = docs
        self._memory.move_to_end(key)
        while len(self._memory) > self.size:
            self._memory.popitem(last=False)

    def _store_call(self, call: Any, fallback: Any) -> Any:
        """A SQLite read or write; a failure is logged (once), counted, and answered by ``fallback``."""
        try:
            return call()
        except sqlite3.Error as exc:
            with self._lock:
                self._totals.store_errors += 1
                self._window.store_errors += 1
                warn, self._store_warned = not self._store_warned, True
            if warn:
                logger.warning(
                    "result cache %s failed (%s); going on without it for this call "
                    "(counted in retrieval/cache_store_errors)",
                    self.store.path if self.store else "?",
                    exc,
                )
            return fallback

    # -- metrics ---------------------------------------------------------------------------------
    @property
    def hit_rate(self) -> float:
        """Share of all queries so far answered without a lookup by the wrapped retriever."""
        return self._totals.hit_rate()

    def stats(self) -> dict[str, float]:
        """Counters since this cache was built (``hits`` = ``queries`` - ``misses``), and the wrapped
        retriever's own ``stats()`` prefixed ``inner.``."""
        with self._lock:
            out = self._totals.as_dict()
            out["memory_entries"] = float(len(self._memory))
        inner = getattr(self.inner, "stats", None)
        if callable(inner):  # e.g. a web API's requests and cost, as ``inner.requests``
            out.update({f"inner.{name}": value for name, value in inner().items()})
        return out

    def training_metrics(self) -> dict[str, float]:
        """This cache's figures since the last call (one log interval), plus the wrapped
        retriever's own ``training_metrics``."""
        with self._lock:
            window, self._window = self._window, _Counts()
        out: dict[str, float] = {
            "retrieval/cache_queries": float(window.queries),
            "retrieval/cache_misses": float(window.misses),
        }
        if window.queries:
            out["retrieval/cache_hit_rate"] = window.hit_rate()
        if self._totals.store_errors:
            out["retrieval/cache_store_errors"] = float(self._totals.store_errors)
        inner = getattr(self.inner, "training_metrics", None)
        if callable(inner):
            out.update(inner())
        return out

    def set_training_progress(self, step: int | None, max_steps: int | None = None) -> None:
        """Passed on to the wrapped retriever; a schedule-following one keys entries by step."""
        self._step = step
        setter = getattr(self.inner, "set_training_progress", None)
        if callable(setter):
            setter(step, max_steps)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped retriever (an endpoint, a size) stay reachable. Guarded so
        # unpickling, which looks attributes up before ``inner`` exists, does not recurse.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f", path={str(self.store.path)!r}" if self.store is not None else ""
        return f"CachedRetriever({self.inner!r}, size={self.size}{where})"


class _Counts:
    """Query counters: ``queries`` asked, ``stored_hits`` answered by an entry, ``misses`` sent on
    (distinct keys), ``errors`` from the wrapped retriever, ``store_errors`` from SQLite."""

    __slots__ = ("errors", "misses", "queries", "store_errors", "stored_hits")

    def __init__(self) -> None:
        self.queries = self.stored_hits = self.misses = self.errors = self.store_errors = 0

    def hit_rate(self) -> float:
        return (self.queries - self.misses) / self.queries if self.queries else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "queries": float(self.queries),
            "hits": float(self.queries - self.misses),
            "stored_hits": float(self.stored_hits),
            "batch_repeats": float(self.queries - self.misses - self.stored_hits),
            "misses": float(self.misses),
            "errors": float(self.errors),
            "store_errors": float(self.store_errors),
            "hit_rate": self.hit_rate(),
        }

    def __getstate__(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, int]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
