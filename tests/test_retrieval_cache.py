"""The result cache: batching and order, keys, LRU bound, errors never stored, the SQLite file
(restart, several processes, corrupt or locked files), pickling, metrics reaching the logs, and
the recipe's ``cache`` section."""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ssrl_trl.callbacks import TrainingProgressCallback
from ssrl_trl.retrieval import Doc, RetrieverError
from ssrl_trl.retrieval.cache import (
    CachedRetriever,
    CacheError,
    SQLiteStore,
    check_cache_file,
    fingerprint,
    normalize_query,
)
from ssrl_trl.retrieval.factory import InMemoryRetriever, RetrieverSpec

DOCS = ['"Paris"\nParis is in France.', '"Rome"\nRome is in Italy.', '"Berlin"\nBerlin is in Germany.']


class Counting:
    """A retriever that records every call (and can be told to fail)."""

    def __init__(self) -> None:
        self.inner = InMemoryRetriever(DOCS)
        self.calls: list[list[str]] = []
        self.fail = False

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        self.calls.append(list(queries))
        if self.fail:
            raise RetrieverError("index offline")
        return self.inner.search(queries, k)


def test_one_batched_call_for_the_distinct_misses_in_order_with_repeats() -> None:
    inner = Counting()
    cache = CachedRetriever(inner, identity="t")
    got = cache.search(["Rome", "Paris", "Rome", "  Rome ", "nothing"], k=1)
    assert inner.calls == [["Rome", "Paris", "nothing"]]  # one call, first spelling of each
    assert [[d.id for d in docs] for docs in got] == [["1"], ["0"], ["1"], ["1"], []]
    assert got == InMemoryRetriever(DOCS).search(["Rome", "Paris", "Rome", "Rome", "nothing"], k=1)
    got[0].clear()  # a caller's list is its own
    again = cache.search(["Paris", "Berlin", "Rome"], k=1)
    assert inner.calls[1:] == [["Berlin"]]
    assert [d[0].id for d in again] == ["0", "2", "1"]
    s = cache.stats()
    assert (s["queries"], s["misses"], s["stored_hits"], s["batch_repeats"]) == (8, 4, 2, 2)
    assert cache.hit_rate == pytest.approx(4 / 8)


def test_k_and_identity_are_part_of_the_key_and_queries_are_normalised(tmp_path: Path) -> None:
    inner = Counting()
    cache = CachedRetriever(inner, identity="a", path=tmp_path / "c.sqlite")
    cache.search(["Rome"], k=1)
    cache.search(["Rome"], k=2)
    assert len(inner.calls) == 2
    other = Counting()  # another index naming the same file never sees these entries
    CachedRetriever(other, identity="b", path=tmp_path / "c.sqlite").search(["Rome"], k=1)
    assert other.calls == [["Rome"]]
    assert normalize_query("ｒome\u00a0 is\n") == "rome is"  # NFKC folds full-width letters
    folded = CachedRetriever(Counting(), identity="c", lowercase=True)
    folded.search(["ROME"], 1)
    folded.search(["rome"], 1)
    assert folded.stats()["misses"] == 1


def test_lru_keeps_at_most_size_entries() -> None:
    inner = Counting()
    cache = CachedRetriever(inner, identity="t", size=2)
    cache.search(["Paris"], 1)
    cache.search(["Rome"], 1)
    cache.search(["Paris"], 1)  # Paris is now the most recent
    cache.search(["Berlin"], 1)  # evicts Rome
    assert cache.stats()["memory_entries"] == 2
    cache.search(["Paris"], 1)
    cache.search(["Rome"], 1)
    assert inner.calls == [["Paris"], ["Rome"], ["Berlin"], ["Rome"]]
    nothing = CachedRetriever(inner, identity="t", size=0)
    nothing.search(["Paris"], 1)
    nothing.search(["Paris"], 1)
    assert nothing.stats()["misses"] == 2


def test_errors_are_raised_and_never_cached(tmp_path: Path) -> None:
    inner = Counting()
    cache = CachedRetriever(inner, identity="t", path=tmp_path / "c.sqlite")
    cache.search(["Paris"], 1)
    inner.fail = True
    with pytest.raises(RetrieverError, match="offline"):
        cache.search(["Paris", "Rome"], 1)
    assert cache.stats()["errors"] == 1 and cache.store.count() == 1  # Rome was not stored
    inner.fail = False
    assert cache.search(["Rome"], 1)[0][0].id == "1"
    assert inner.calls[-1] == ["Rome"]


def test_the_file_survives_a_restart_and_is_shared(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    first = CachedRetriever(Counting(), identity="t", path=path)
    first.search(["Paris", "Rome"], 2)
    first.close()
    inner = Counting()
    second = CachedRetriever(inner, identity="t", path=path)
    assert [d.id for d in second.search(["Rome"], 2)[0]] == ["1"]
    assert inner.calls == [] and second.stats()["stored_hits"] == 1
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


_WRITER = """
import sys
from ssrl_trl.retrieval.cache import CachedRetriever
from ssrl_trl.retrieval.memory import InMemoryRetriever
docs = ['"Paris"\\nParis is in France.', '"Rome"\\nRome is in Italy.']
cache = CachedRetriever(InMemoryRetriever(docs), identity="shared", path=sys.argv[1], size=0)
for i in range(60):
    cache.search([f"{sys.argv[2]} Paris {i}", f"{sys.argv[2]} Rome {i}"], 1)
"""


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite")
    check_cache_file(path)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, path, p]) for p in ("a", "b")]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert SQLiteStore(path).count() == 240
    inner = Counting()
    reader = CachedRetriever(inner, identity="shared", path=path)
    assert reader.search(["b Rome 59", "a Paris 0"], 1)[0][0].id == "1"
    assert inner.calls == []


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "cache.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match=r"cache\.sqlite cannot be opened.*not a result cache"):
        CachedRetriever(Counting(), identity="t", path=bad)
    spec = RetrieverSpec.from_values(
        {"kind": "memory", "options": {"docs": DOCS}, "cache": {"path": str(bad)}}
    )
    with pytest.raises(ValueError, match="delete it or point cache.path elsewhere"):
        spec.build()


def test_a_locked_file_during_a_run_falls_back_without_failing(tmp_path: Path, caplog) -> None:
    path = tmp_path / "cache.sqlite"
    inner = Counting()
    cache = CachedRetriever(inner, identity="t", path=path, timeout=0.05)
    cache.search(["Paris"], 1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the file
    try:
        got = cache.search(["Rome", "Paris"], 1)  # Paris from memory; Rome from the index
        assert [d[0].id for d in got] == ["1", "0"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cache.stats()["store_errors"] >= 1
    assert "going on without it" in caplog.text
    assert cache.training_metrics()["retrieval/cache_store_errors"] >= 1


def test_pickled_copy_reopens_the_file_and_keeps_entries(tmp_path: Path) -> None:
    inner = Counting()
    cache = CachedRetriever(inner, identity="t", path=tmp_path / "c.sqlite")
    cache.search(["Berlin"], 1)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.search(["Berlin"], 1)[0][0].id == "2"
    assert copy.inner.calls == [["Berlin"]]  # the copy's inner was never asked again
    copy.search(["Paris"], 1)
    assert cache.store.count() == 2  # the copy wrote to the same file


class Scheduled(Counting):
    """A retriever whose answers follow the training schedule (like the simulated engine)."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[int | None] = []

    def set_training_progress(self, step: int | None, max_steps: int | None = None) -> None:
        self.told.append(step)

    def training_metrics(self) -> dict[str, float]:
        return {"simulator/noise_ratio": 0.5}


def test_metrics_reach_the_logs_through_the_progress_callback() -> None:
    inner = Scheduled()
    cache = CachedRetriever(inner, identity="t")
    env = SimpleNamespace(retriever=cache)
    callback = TrainingProgressCallback(SimpleNamespace(environment=lambda tokenizer: env))
    state = SimpleNamespace(global_step=1, max_steps=3, log_history=[{"step": 1, "loss": 0.1}])
    callback.on_step_begin(None, state, None, processing_class=object())
    assert inner.told == [1]
    cache.search(["Paris", "Paris", "Rome", "Paris"], 1)
    logs: dict[str, float] = {}
    callback.on_log(None, state, None, logs=logs, processing_class=object())
    assert logs["retrieval/cache_hit_rate"] == pytest.approx(0.5)
    assert logs["retrieval/cache_queries"] == 4 and logs["retrieval/cache_misses"] == 2
    assert logs["simulator/noise_ratio"] == 0.5  # the wrapped retriever's own metrics still arrive
    assert state.log_history[-1]["retrieval/cache_hit_rate"] == pytest.approx(0.5)
    assert "retrieval/cache_hit_rate" not in cache.training_metrics()  # a window with no queries
    # A schedule-following retriever's entries are per step: the next step asks again.
    state.global_step = 2
    callback.on_step_begin(None, state, None, processing_class=object())
    cache.search(["Paris"], 1)
    assert inner.calls[-1] == ["Paris"]


def test_recipe_section_validates_and_wraps_any_kind(tmp_path: Path) -> None:
    section = {
        "kind": "memory",
        "options": {"docs": DOCS},
        "cache": {"size": 5, "path": str(tmp_path / "c.sqlite")},
    }
    built = RetrieverSpec.from_values(section).build()
    assert isinstance(built, CachedRetriever) and built.size == 5 and built.store is not None
    assert built.search(["Rome"], 1)[0][0].id == "1"
    assert isinstance(
        RetrieverSpec.from_values({"kind": "memory", "options": {"docs": DOCS}}).build(), InMemoryRetriever
    )
    with pytest.raises(ValueError, match="cache.size"):
        RetrieverSpec.from_values({**section, "cache": {"size": -1}})
    with pytest.raises(ValueError, match="cache.sise"):
        RetrieverSpec.from_values({**section, "cache": {"sise": 10}})


def test_fingerprint_tells_indexes_apart_and_ignores_operational_options(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "ssrl_index.json").write_text('{"kind": "bm25"}')
    assert fingerprint("bm25", {"index": a}) != fingerprint("bm25", {"index": b})
    assert fingerprint("bm25", {"index": a, "mmap": True}) == fingerprint("bm25", {"index": a, "mmap": False})
    assert fingerprint("http", {"url": "http://x:1"}) != fingerprint("http", {"url": "http://y:1"})
    before = fingerprint("bm25", {"index": a})
    (a / "docs.jsonl").write_text("{}\n")  # a rebuilt index starts afresh
    assert fingerprint("bm25", {"index": a}) != before


def test_recipe_load_refuses_a_corrupt_cache_file(tmp_path: Path, shared_data: Path) -> None:
    from conftest import write_tiny_recipe
    from ssrl_trl.recipe import RecipeError, load_recipe

    recipe = write_tiny_recipe(tmp_path, tmp_path / "model", shared_data, method="search_r1")
    good = load_recipe(recipe, [f"environment.retriever.cache.path={tmp_path / 'ok.sqlite'}"])
    assert good.environment.options.retriever.cache.size == 10_000
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 200)
    with pytest.raises(RecipeError, match=r"environment.retriever.cache: result cache .*bad.sqlite"):
        load_recipe(recipe, [f"environment.retriever.cache.path={bad}"])
