"""Lucene BM25 through Pyserini (Anserini): the engine behind Search-R1's published wiki-18 index.

    build_retriever("lucene", index="indexes/wiki18_bm25/bm25", docstore="indexes/wiki18_docs")
    ssrl-trl index --corpus ../shared/data/corpus/mini_wiki.jsonl --kind lucene --out indexes/mini_wiki_lucene

Why a second BM25: labs already hold Lucene indexes (Search-R1's ``wiki-18-bm25-index``, Pyserini's
prebuilt ones) and their numbers were measured with Lucene's analyzer (Porter stemmer, Lucene's
English stopwords) and its BM25 defaults (k1=0.9, b=0.4); serving that index as it is keeps a run
comparable with theirs. Results are :class:`~.base.Doc` objects with the same
``"Title"\\ntext`` contents as every other kind, so the rendered ``Doc N(Title: ...)`` is the same.

Where the passage text comes from, in order: the ``raw`` field (an index built with
``-storeRaw``, as :func:`build_lucene_index` does: the JSON record, whose ``contents`` is read),
the stored ``contents`` field (``-storeContents``), or — for an index that stores only ids, like
Search-R1's — a passage store (``docstore``: a directory with ``docs.jsonl`` + ``offsets.npy``,
see :func:`build_docstore`) read at row ``int(id)``, the convention of Search-R1's server.

Runtime: Pyserini 0.25.0 (Anserini 0.25, Lucene 9.9) is the last release that runs on Java 11+,
so it works with Debian 12's openjdk-17; later releases need Java 21. It is installed without its
dependencies (``make setup-lucene``) because only its jar and classpath setup are used here: the
searcher is Anserini's ``SimpleSearcher`` (what Pyserini's ``LuceneSearcher`` wraps), called
through pyjnius, which keeps spaCy, onnxruntime and the OpenAI client (imported by Pyserini's
Python search package) out of the environment. Every setup problem — no Java, too old a Java, no
Pyserini, no index — is one :class:`LuceneSetupError` line, raised when the options are validated
(a recipe fails at load, before any weights) or when the index is opened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Doc, RetrieverError, check_k
from .corpus import DocStore, write_index_meta
from .factory import RetrieverOptions, register_retriever

__all__ = [
    "PYSERINI_VERSION",
    "LuceneOptions",
    "LuceneRetriever",
    "LuceneSetupError",
    "build_docstore",
    "build_lucene_index",
    "check_lucene_runtime",
]

#: the Pyserini release this module is written and tested against (``make setup-lucene``)
PYSERINI_VERSION = "0.25.0"
_SETUP_HINT = "run `make setup-lucene` (see docs/retrieval_lucene.md)"
# Lucene refuses a query with more clauses than this (1024 by default); a bag-of-words query has
# one clause per distinct term, and a policy can write a very long query. Raised once per JVM.
_MAX_CLAUSES = 1 << 16
# pyjnius is not safe for concurrent calls: two Python threads calling into the JVM at once mix up
# object references (measured with pyjnius 1.9.0: ``IncompatibleClassChangeError`` or a
# ``NullPointerException`` within a few hundred calls from 8 threads, on plain java.util classes).
# Every JVM call in this module holds this one lock; a batch still searches in parallel on
# Anserini's own Java thread pool, which pyjnius does not touch.
_JVM_LOCK = threading.RLock()


class LuceneSetupError(ValueError):
    """Java, Pyserini or the index is missing or unusable; the message says which and the fix."""


# -- runtime checks (no JVM started) ----------------------------------------------------------------
def _java_executable() -> Path:
    """The ``java`` that pyjnius will load: ``$JAVA_HOME/bin/java`` if set, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not java.is_file():
            raise LuceneSetupError(f"JAVA_HOME={home} has no bin/java; unset it or point it at a JDK/JRE")
        return java
    found = shutil.which("java")
    if found is None:
        raise LuceneSetupError(
            "the lucene retriever needs Java (11 or newer) and none was found on PATH or in JAVA_HOME; "
            "install it with `apt-get install openjdk-17-jre-headless` or " + _SETUP_HINT
        )
    return Path(found)


def _java_major(java: Path) -> int:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LuceneSetupError(f"could not run {java} -version: {exc}") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise LuceneSetupError(f"could not read the Java version from `{java} -version`")
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0_x" is Java 8


def _pyserini_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("pyserini")
    except PackageNotFoundError:
        raise LuceneSetupError(
            f"the lucene retriever needs Pyserini, which is not installed; {_SETUP_HINT}"
        ) from None
    try:
        import jnius_config  # noqa: F401  (pyjnius; imported without starting a JVM)
    except ImportError:
        raise LuceneSetupError(
            f"the lucene retriever needs pyjnius, which is not installed; {_SETUP_HINT}"
        ) from None
    return found


def _required_java(pyserini: str) -> int:
    """Pyserini moved from Java 11 to Java 21 with release 0.35.0 (Anserini 0.35)."""
    parts = [int(p) for p in re.findall(r"\d+", pyserini)[:2]] + [0, 0]
    return 21 if (parts[0], parts[1]) >= (0, 35) else 11


@functools.cache
def check_lucene_runtime() -> tuple[str, int]:
    """``(pyserini version, java major)`` when Lucene can run here; :class:`LuceneSetupError`
    naming the problem otherwise. Runs ``java -version`` once per process; starts no JVM."""
    pyserini = _pyserini_version()
    java = _java_executable()
    major = _java_major(java)
    need = _required_java(pyserini)
    if major < need:
        raise LuceneSetupError(
            f"Pyserini {pyserini} needs Java {need} or newer but {java} is Java {major}; "
            f"install pyserini=={PYSERINI_VERSION} (Java 11+) or a newer Java"
        )
    return pyserini, major


def _jvm() -> Any:
    """The ``jnius`` module with Anserini's jar on the classpath (starts the JVM on first use).
    Call with :data:`_JVM_LOCK` held."""
    check_lucene_runtime()
    try:
        import pyserini.pyclass  # noqa: F401  (puts Pyserini's Anserini jar on the classpath)
    except ValueError as exc:  # jnius_config: "VM is already running, can't set classpath"
        raise LuceneSetupError(
            "the JVM was started (something imported jnius) before Pyserini could put Anserini's jar "
            "on its classpath; build the lucene retriever before other Java users, or set "
            f"ANSERINI_CLASSPATH/CLASSPATH to include the jar ({_first_line(exc)})"
        ) from None
    import jnius

    jnius.autoclass("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(_MAX_CLAUSES)
    return jnius


def _check_index_dir(index: Path) -> None:
    if not index.is_dir():
        raise LuceneSetupError(
            f"Lucene index directory not found: {index} (build one with `ssrl-trl index --kind lucene`, "
            "or download a prebuilt one: docs/retrieval_lucene.md)"
        )
    if not any(p.name.startswith("segments_") for p in index.iterdir()):
        hint = ""
        if (index / "bm25").is_dir():  # Search-R1's download: the index is its bm25/ folder
            hint = f"; did you mean {index / 'bm25'}?"
        raise LuceneSetupError(f"{index} is not a Lucene index (no segments_N file){hint}")


def _open_docstore(directory: Path) -> DocStore:
    try:
        return DocStore(directory)
    except FileNotFoundError:
        raise LuceneSetupError(
            f"docstore {directory} not found or not a passage store (docs.jsonl + offsets.npy); build it "
            "from the index's corpus with `ssrl-trl index --kind docstore`"
        ) from None


# -- the retriever ----------------------------------------------------------------------------------
class LuceneRetriever:
    """BM25 search over a Lucene index, batched over Anserini's thread pool.

    Thread-safe: calls from several Python threads take turns at the JVM (pyjnius needs that,
    see :data:`_JVM_LOCK`), and each batch is searched by ``threads`` Java threads, so batch a
    step's queries into one call. Picklable: a copy reopens the index from its options (a JVM
    cannot cross processes), so build it in the process that searches or pass it to a spawned one.
    """

    def __init__(
        self,
        index: str | os.PathLike[str],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        docstore: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.index = Path(index)
        self.k1, self.b = float(k1), float(b)
        self.docstore_dir = Path(docstore) if docstore is not None else None
        self.threads = int(threads or min(8, os.cpu_count() or 1))
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        _check_index_dir(self.index)
        self.store = _open_docstore(self.docstore_dir) if self.docstore_dir is not None else None
        with _JVM_LOCK:
            jnius = _jvm()
            self._jnius = jnius
            try:
                self._searcher = jnius.autoclass("io.anserini.search.SimpleSearcher")(str(self.index))
            except jnius.JavaException as exc:
                raise LuceneSetupError(
                    f"Lucene could not open {self.index}: {exc.classname}: {_first_line(exc.innermessage)} "
                    f"(Pyserini {check_lucene_runtime()[0]} reads indexes written by Lucene 8.x-9.9; "
                    "a newer index needs a newer Pyserini on Java 21)"
                ) from None
            self._searcher.set_bm25(self.k1, self.b)
            self._list = jnius.autoclass("java.util.ArrayList")
            self.num_docs = int(self._searcher.get_total_num_docs())
            if self.num_docs == 0:
                raise LuceneSetupError(f"Lucene index {self.index} holds no documents")
            self.text_field = self._text_field()

    def _text_field(self) -> str | None:
        """Which stored field holds the passage (``raw`` / ``contents``), ``None`` for the store."""
        first = self._searcher.doc(0)
        for field in ("raw", "contents"):
            if first is not None and first.get(field) is not None:
                return field
        if self.store is None:
            raise LuceneSetupError(
                f"Lucene index {self.index} stores no passage text (neither 'raw' nor 'contents'); "
                "give docstore: a passage store built from the same corpus (`ssrl-trl index --kind docstore`)"
            )
        # Check the id -> row convention once on the first document, not on the first search.
        self._from_store(str(first.get("id")))
        return None

    def __len__(self) -> int:
        return self.num_docs

    def __repr__(self) -> str:
        return f"LuceneRetriever({self.index}, {self.num_docs} passages, k1={self.k1}, b={self.b})"

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        """Top ``k`` passages per query in BM25 order; passages sharing no term are left out."""
        k = check_k(k, self.num_docs)
        if not queries:
            return []
        with _JVM_LOCK:
            if self._searcher is None:
                raise RetrieverError(f"{self!r} is closed")
            texts, ids = self._list(), self._list()
            for i, query in enumerate(queries):
                texts.add(str(query))
                ids.add(str(i))
            try:
                found = self._searcher.batch_search(texts, ids, k, min(self.threads, len(queries)))
                hits = {entry.getKey(): entry.getValue() for entry in found.entrySet().toArray()}
                missing = [i for i in range(len(queries)) if str(i) not in hits]
                if missing:  # Anserini logs the failing query's exception and leaves it out of the map
                    raise RetrieverError(
                        f"Lucene search failed for query {queries[missing[0]][:80]!r} (see the Java log above)"
                    )
                return [[self._doc(hit) for hit in hits[str(i)]] for i in range(len(queries))]
            except self._jnius.JavaException as exc:
                raise RetrieverError(
                    f"Lucene search failed: {exc.classname}: {_first_line(exc.innermessage)}"
                ) from None

    def _doc(self, hit: Any) -> Doc:
        """One Anserini ``Result`` as a Doc (JVM lock held)."""
        docid, score = str(hit.docid), float(hit.score)
        if self.text_field is None:
            return Doc(docid, self._from_store(docid), score)
        stored = hit.lucene_document.get(self.text_field)
        return Doc(docid, _contents(stored) if self.text_field == "raw" else str(stored), score)

    def _from_store(self, docid: str) -> str:
        assert self.store is not None
        row = int(docid) if docid.isdigit() else -1
        if not 0 <= row < len(self.store) or (found := self.store.get(row))[0] != docid:
            raise LuceneSetupError(
                f"docstore {self.docstore_dir} does not hold Lucene document {docid!r} at row {docid}: "
                "the store must be built from the index's corpus, in order, with ids equal to row numbers"
            )
        return found[1]

    def close(self) -> None:
        """Release the Lucene reader and the passage store; searching afterwards is an error."""
        with _JVM_LOCK:
            if self._searcher is not None:
                self._searcher.close()
                self._searcher = None
        if self.store is not None:
            self.store.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "k1": self.k1,
            "b": self.b,
            "docstore": self.docstore_dir,
            "threads": self.threads,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("index"), **state)  # type: ignore[misc]


def _contents(raw: str) -> str:
    """The passage of a stored JSON record: ``contents``, or ``"title"\\ntext`` (the corpus rule)."""
    record = json.loads(raw)
    if "contents" in record:
        return str(record["contents"])
    title = record.get("title") or ""
    return f'"{title}"\n{record.get("text", "")}' if title else str(record.get("text", ""))


def _first_line(message: Any) -> str:
    return str(message or "").strip().splitlines()[0] if str(message or "").strip() else ""


# -- building ---------------------------------------------------------------------------------------
def build_lucene_index(
    records: Iterable[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    *,
    threads: int | None = None,
    optimize: bool = False,
    store: Literal["raw", "contents", "none"] = "raw",
    docstore: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> LuceneRetriever:
    """Index ``(id, contents)`` records into ``out_dir`` with Anserini's ``IndexCollection``
    (JsonCollection, Lucene's English analyzer) and return the retriever.

    ``store`` says what the index keeps besides ids: ``"raw"`` (the JSON record; the default, so
    the index alone serves passages), ``"contents"``, or ``"none"`` — the layout of Search-R1's
    wiki-18 index, whose text comes from a passage store (``docstore``, :func:`build_docstore`).
    The records are written once as JsonCollection shards (one per indexing thread) in a
    temporary folder next to ``out_dir``, removed afterwards; the indexer runs in a child
    process so its JVM (heap, threads, ``System.exit``) stays out of this one.
    """
    if store not in ("raw", "contents", "none"):
        raise ValueError(f"store must be 'raw', 'contents' or 'none', got {store!r}")
    if store == "none" and docstore is None:
        raise ValueError("store='none' keeps no passage text: give docstore (see build_docstore)")
    check_lucene_runtime()
    out_dir = Path(out_dir)
    threads = int(threads or min(8, os.cpu_count() or 1))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.collection-") as tmp:
        count = _write_collection(records, Path(tmp), threads)
        if count == 0:
            raise ValueError("cannot build a Lucene index from an empty corpus")
        cmd = [
            sys.executable, "-m", "pyserini.index.lucene",
            "-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
            "-input", tmp, "-index", str(out_dir), "-threads", str(threads),
        ]  # fmt: skip
        if store != "none":
            cmd.append("-storeRaw" if store == "raw" else "-storeContents")
        if optimize:
            cmd.append("-optimize")
        proc = subprocess.run(cmd, capture_output=not show_progress, text=True)
    if proc.returncode != 0 or not out_dir.is_dir() or not any(out_dir.glob("segments_*")):
        tail = (
            "" if show_progress else " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        )
        raise RuntimeError(f"Anserini IndexCollection failed (exit {proc.returncode}) {tail}".strip())
    (out_dir / "write.lock").unlink(missing_ok=True)
    write_index_meta(out_dir, "lucene", num_docs=count, stored=store, pyserini=check_lucene_runtime()[0])
    retriever = LuceneRetriever(out_dir, docstore=docstore)
    if len(retriever) != count:
        raise RuntimeError(f"Lucene index {out_dir} holds {len(retriever)} documents, {count} were written")
    return retriever


def _write_collection(records: Iterable[tuple[str, str]], folder: Path, shards: int) -> int:
    """Write ``records`` round-robin into ``shards`` JsonCollection files; the record count."""
    count = 0
    with contextlib.ExitStack() as stack:
        files = [
            stack.enter_context(open(folder / f"part-{i:03d}.jsonl", "w", encoding="utf-8"))
            for i in range(shards)
        ]
        for count, (doc_id, contents) in enumerate(records, start=1):
            line = json.dumps({"id": doc_id, "contents": contents}, ensure_ascii=False)
            files[count % shards].write(line + "\n")
    for path in folder.iterdir():  # Anserini counts an empty file as a collection file to read
        if path.stat().st_size == 0:
            path.unlink()
    return count


def build_docstore(records: Iterable[tuple[str, str]], out_dir: str | os.PathLike[str]) -> DocStore:
    """A passage store alone (``docs.jsonl`` + ``offsets.npy``) for a Lucene index that stores only
    ids, such as Search-R1's wiki-18 one: build it from the same corpus, in its order."""
    n = sum(1 for _ in DocStore.write(records, out_dir))
    if n == 0:
        raise ValueError("cannot build a passage store from an empty corpus")
    write_index_meta(out_dir, "docstore", num_docs=n)
    return DocStore(out_dir)


# -- the retriever kind -----------------------------------------------------------------------------
class LuceneOptions(RetrieverOptions):
    """``index``: a Lucene index directory; BM25 ``k1``/``b`` (Pyserini's and Search-R1's defaults);
    ``docstore``: passage store for an index that stores no text; ``threads``: search threads."""

    index: Path
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)
    docstore: Path | None = None
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _runtime(self) -> LuceneOptions:
        check_lucene_runtime()  # Java and Pyserini, when the recipe loads (paths are checked later)
        return self


def _build(o: LuceneOptions) -> LuceneRetriever:
    return LuceneRetriever(o.index, k1=o.k1, b=o.b, docstore=o.docstore, threads=o.threads)


register_retriever("lucene", LuceneOptions, _build)
