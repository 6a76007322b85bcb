"""The ``lucene`` retriever kind (Pyserini 0.25.0 / Anserini over Java), on small Lucene indexes
built from the first passages of the mini corpus: the same results format and rendering as the
``bm25`` kind, ``k`` and batch rules, the id-only index + passage store layout of Search-R1's
wiki-18 index, one-line setup errors, and the recipe/factory path.

Skipped, with the reason, only where Java or Pyserini is not installed (a fresh clone before
``make setup-lucene``); ``make test-lucene`` installs both and runs these for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


def _missing_runtime() -> str | None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java is not installed (make setup-lucene installs openjdk-17)"
    for module, package in (("pyserini", "pyserini==0.25.0"), ("jnius", "pyjnius")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (make setup-lucene installs it)"
    return None


_REASON = _missing_runtime()
if _REASON is not None:
    pytest.skip(f"lucene retriever tests need Java and Pyserini: {_REASON}", allow_module_level=True)

from ssrl_trl.documents import SEARCH_R1_DOCUMENTS  # noqa: E402
from ssrl_trl.retrieval.base import Doc, RetrieverError  # noqa: E402
from ssrl_trl.retrieval.bm25 import BM25Index  # noqa: E402
from ssrl_trl.retrieval.corpus import iter_corpus, read_index_meta  # noqa: E402
from ssrl_trl.retrieval.factory import (  # noqa: E402
    RetrieverSpec,
    build_retriever,
    load_retriever,
    retriever_options,
)
from ssrl_trl.retrieval.index_cli import main as index_main  # noqa: E402
from ssrl_trl.retrieval.lucene import (  # noqa: E402
    LuceneRetriever,
    LuceneSetupError,
    _required_java,
    build_docstore,
    build_lucene_index,
    check_lucene_runtime,
)

N = 300  # passages indexed: ~4 s per index build on 2 cores, JVM start included


@pytest.fixture(scope="module")
def corpus(shared_data) -> Path:
    return shared_data / "corpus" / "mini_wiki.jsonl"


@pytest.fixture(scope="module")
def passages(corpus) -> dict[str, str]:
    return dict(iter_corpus(corpus, limit=N))


@pytest.fixture(scope="module")
def lucene_dir(corpus, tmp_path_factory) -> Path:
    """Built through the CLI (``ssrl-trl index --kind lucene``), as a user would."""
    out = tmp_path_factory.mktemp("lucene") / "mini_lucene"
    argv = ["--corpus", str(corpus), "--kind", "lucene", "--out", str(out), "--limit", str(N), "--quiet"]
    assert index_main(argv) == 0
    return out


@pytest.fixture(scope="module")
def lucene(lucene_dir) -> LuceneRetriever:
    return LuceneRetriever(lucene_dir)


@pytest.fixture(scope="module")
def bm25(corpus, tmp_path_factory) -> BM25Index:
    out = tmp_path_factory.mktemp("bm25") / "mini_bm25"
    return BM25Index.build(iter_corpus(corpus, limit=N), out, show_progress=False)


@pytest.fixture(scope="module")
def titles(passages) -> list[str]:
    """Queries with a known best passage: every 15th passage's title (20 queries)."""
    return [contents.split("\n", 1)[0].strip('"') for contents in list(passages.values())[::15]]


def test_runtime_check_names_versions():
    pyserini, java = check_lucene_runtime()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", pyserini) and java >= _required_java(pyserini) >= 11
    assert _required_java("0.25.0") == 11 and _required_java("0.35.1") == 21 and _required_java("1.2.0") == 21


def test_cli_build_records_what_it_built(lucene_dir, lucene):
    meta = read_index_meta(lucene_dir)
    assert meta["kind"] == "lucene" and meta["num_docs"] == N and meta["stored"] == "raw"
    assert len(lucene) == N and lucene.text_field == "raw"
    assert not list(lucene_dir.parent.glob(".mini_lucene.collection-*"))  # the temporary shards are gone


def test_results_have_the_bm25_kinds_format_and_rendering(lucene, bm25, passages):
    query = "Evan Morris, lobbyist in Washington"
    (found,) = lucene.search([query], 3)
    (reference,) = bm25.search([query], 3)
    assert found[0].id == reference[0].id == "0"
    for doc in found:
        assert isinstance(doc, Doc) and isinstance(doc.id, str) and isinstance(doc.score, float)
        assert doc.contents == passages[doc.id]  # the corpus's '"Title"\ntext', byte for byte
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    # a passage both kinds return renders identically in the environment's information block
    same = Doc(found[0].id, found[0].contents), Doc(reference[0].id, reference[0].contents)
    assert SEARCH_R1_DOCUMENTS.render([same[0]]) == SEARCH_R1_DOCUMENTS.render([same[1]])
    rendered = SEARCH_R1_DOCUMENTS.render(found)
    assert rendered.startswith('Doc 1(Title: "Evan Morris") Evan Morris Evan L. Morris (January 26, 1977')
    assert len(found) == 3 and rendered.count("\nDoc ") == 2 and '\nDoc 2(Title: "' in rendered


def test_title_queries_find_their_passage(lucene, bm25, titles, passages):
    by_title = {c.split("\n", 1)[0].strip('"'): i for i, c in passages.items()}
    found = lucene.search(titles, 5)
    hits = sum(any(d.id == by_title[t] for d in docs) for t, docs in zip(titles, found, strict=True))
    reference = bm25.search(titles, 5)
    bm25_hits = sum(any(d.id == by_title[t] for d in docs) for t, docs in zip(titles, reference, strict=True))
    assert hits >= 18 and abs(hits - bm25_hits) <= 3, (hits, bm25_hits)


def test_k_rules_match_the_other_kinds(lucene, bm25, titles):
    assert all(len(docs) <= 1 for docs in lucene.search(titles, 1))
    assert all(len(docs) == 4 for docs in lucene.search(["the history of the united states"] * 2, 4))
    everything = lucene.search(["american"], 10 * N)[0]  # k beyond the corpus: every match, once
    assert 10 < len(everything) < N and len({d.id for d in everything}) == len(everything)
    for retriever in (lucene, bm25):
        with pytest.raises(ValueError, match="k must be >= 1, got 0"):
            retriever.search(["x"], 0)


def test_batches_keep_query_order(lucene, titles):
    one_by_one = [lucene.search([t], 3)[0] for t in titles]
    assert lucene.search(titles, 3) == one_by_one
    assert lucene.search(titles[::-1], 3) == one_by_one[::-1]
    assert lucene.search([titles[0], titles[0]], 3) == [one_by_one[0], one_by_one[0]]


def test_empty_and_blank_queries(lucene, bm25, titles):
    assert lucene.search([], 3) == bm25.search([], 3) == []
    odd = ["", "   ", "the of a", '"unbalanced (quote', "AND OR NOT *", titles[1]]
    found = lucene.search(odd, 3)
    assert found[:5] == bm25.search(odd, 3)[:5] == [[], [], [], [], []]
    assert found[5] and found[5] == lucene.search([titles[1]], 3)[0]


def test_long_queries_pass_lucenes_clause_limit(lucene):
    query = " ".join(f"term{i}" for i in range(3000)) + " Evan Morris"  # 3,002 clauses > 1,024
    assert lucene.search([query], 1)[0][0].id == "0"


def test_concurrent_callers_get_their_own_results(lucene, titles):
    """pyjnius mixes up references when two threads call into the JVM at once; the retriever
    serialises its calls, so a threaded server or rollout sees the same results."""
    expected = lucene.search(titles, 2)

    def one(i: int) -> bool:
        return lucene.search(titles[i % 5 :], 2) == expected[i % 5 :]

    for _ in range(2):  # a fresh pool each time: new threads attach to the JVM too
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(one, range(80)))


def test_pickled_copy_reopens_the_index(lucene, titles):
    copy = pickle.loads(pickle.dumps(lucene))
    assert copy is not lucene and copy.search(titles[:3], 2) == lucene.search(titles[:3], 2)
    copy.close()
    with pytest.raises(RetrieverError, match="closed"):
        copy.search(["x"], 1)
    assert lucene.search(titles[:1], 1)  # closing the copy leaves the original open


def test_id_only_index_reads_text_from_the_docstore(corpus, lucene, titles, tmp_path):
    """Search-R1's wiki-18 BM25 index stores ids only; the text comes from the corpus by row."""
    store = tmp_path / "docs"
    build_docstore(iter_corpus(corpus, limit=N), store)
    assert read_index_meta(store)["kind"] == "docstore"
    bare = build_lucene_index(
        iter_corpus(corpus, limit=N), tmp_path / "ids_only", store="none", docstore=store, show_progress=False
    )
    assert bare.text_field is None and read_index_meta(tmp_path / "ids_only")["stored"] == "none"
    assert bare.search(titles, 3) == lucene.search(titles, 3)  # ids, text and scores alike

    with pytest.raises(LuceneSetupError, match="stores no passage text") as info:
        LuceneRetriever(tmp_path / "ids_only")
    assert "docstore" in str(info.value) and "\n" not in str(info.value)

    shifted = tmp_path / "shifted"  # a store of other passages: ids do not match the rows
    build_docstore(((str(int(i) + 1), c) for i, c in iter_corpus(corpus, limit=N)), shifted)
    # Lucene's first internal document is whichever the indexer's threads added first
    with pytest.raises(LuceneSetupError, match=r"does not hold Lucene document '(\d+)' at row \1:"):
        LuceneRetriever(tmp_path / "ids_only", docstore=shifted)
    with pytest.raises(ValueError, match="give docstore"):
        build_lucene_index(iter_corpus(corpus, limit=5), tmp_path / "never", store="none")
    assert not (tmp_path / "never").exists()


def test_stored_contents_index_gives_the_same_docs(corpus, lucene, titles, tmp_path):
    stored = build_lucene_index(
        iter_corpus(corpus, limit=N), tmp_path / "contents", store="contents", show_progress=False
    )
    assert stored.text_field == "contents"
    assert stored.search(titles, 3) == lucene.search(titles, 3)


def test_missing_or_foreign_index_is_one_line_naming_the_path(tmp_path, lucene_dir):
    missing = tmp_path / "no_such_index"
    for make in (lambda: LuceneRetriever(missing), lambda: build_retriever("lucene", index=missing)):
        with pytest.raises(LuceneSetupError) as info:
            make()
        message = str(info.value)
        assert str(missing) in message and "not found" in message and "\n" not in message
    (tmp_path / "download" / "bm25").mkdir(parents=True)  # Search-R1's layout, pointed one level up
    with pytest.raises(LuceneSetupError, match="not a Lucene index .*did you mean .*bm25"):
        LuceneRetriever(tmp_path / "download")
    with pytest.raises(LuceneSetupError, match=r"docstore .*no_store not found.*--kind docstore"):
        LuceneRetriever(lucene_dir, docstore=tmp_path / "no_store")


def test_bad_options_fail_when_the_recipe_loads(lucene_dir):
    spec = {"kind": "lucene", "index": str(lucene_dir)}
    for options, message in (
        ({"k1": -1}, "k1: Input should be greater than 0"),
        ({"b": 2}, "b: Input should be less than or equal to 1"),
        ({"threads": 0}, "threads: Input should be greater than or equal to 1"),
        (
            {"topk": 3},
            "unknown option(s) ['topk']; valid options: ['index', 'k1', 'b', 'docstore', 'threads']",
        ),
    ):
        with pytest.raises(ValueError, match=f"retriever kind 'lucene'.*{re.escape(message)}"):
            RetrieverSpec.from_values({**spec, "options": options})
    with pytest.raises(ValueError, match="retriever kind 'lucene' needs index"):
        RetrieverSpec.from_values({"kind": "lucene"})
    assert retriever_options("lucene", {"index": lucene_dir}).k1 == 0.9


def test_recipe_with_kind_lucene_loads_and_builds(lucene_dir, shared_data, tmp_path, titles, lucene):
    import yaml

    from ssrl_trl.recipe import RecipeError, load_recipe

    recipe = {
        "method": "search_r1",
        "model": {"name_or_path": "some/model"},
        "data": {"train": str(shared_data / "qa" / "mini_eval.jsonl"), "prompt_template": "search_r1"},
        "environment": {
            "kind": "retrieval",
            "topk": 3,
            "retriever": {"kind": "lucene", "index": str(lucene_dir), "options": {"k1": 0.9, "b": 0.4}},
        },
        "rewards": [{"path": "rewards.search_r1.em"}],
        "grpo": {"output_dir": str(tmp_path / "out")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    spec = load_recipe(path).environment.options.retriever
    retriever = spec.build()
    assert isinstance(retriever, LuceneRetriever) and retriever.search(titles, 3) == lucene.search(titles, 3)
    cached = RetrieverSpec.from_values(
        {"kind": "lucene", "index": str(lucene_dir), "cache": {"size": 64}}
    ).build()
    assert isinstance(cached.inner, LuceneRetriever)  # the shared result cache takes this kind too
    assert cached.search(titles[:4], 3) == cached.search(titles[:4], 3) == lucene.search(titles[:4], 3)

    recipe["environment"]["retriever"]["index"] = str(tmp_path / "absent")
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="retriever index '.*absent' not found"):
        load_recipe(path)
    recipe["environment"]["retriever"].update(index=str(lucene_dir), options={"bm25_k1": 1.2})
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="unknown option"):
        load_recipe(path)


def test_load_retriever_and_cli_guard(lucene_dir, titles, lucene, tmp_path, capsys):
    loaded = load_retriever(lucene_dir, mmap=True)  # the server's call: bm25/dense options ignored
    assert isinstance(loaded, LuceneRetriever) and loaded.search(titles[:2], 2) == lucene.search(
        titles[:2], 2
    )
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "0", "contents": '"T"\nx'}) + "\n")
    assert index_main(["--corpus", str(corpus), "--kind", "lucene", "--out", str(lucene_dir), "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_java_version_reading_and_bad_java_home(tmp_path, monkeypatch):
    from ssrl_trl.retrieval.lucene import _java_executable, _java_major

    for banner, major in (('openjdk version "1.8.0_292"', 8), ('openjdk version "17.0.15" 2025-04-15', 17)):
        fake = tmp_path / f"java{major}"
        fake.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
        fake.chmod(0o755)
        assert _java_major(fake) == major
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no_jdk"))
    with pytest.raises(LuceneSetupError, match=r"JAVA_HOME=.*no_jdk has no bin/java"):
        _java_executable()
