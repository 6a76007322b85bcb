"""Corpus reading and the on-disk passage store shared by the BM25 and dense indexes.

The full wiki-18 corpus has 21M passages (~14 GB of text), so nothing here loads a corpus into
memory: :func:`iter_corpus` streams ``(id, contents)`` pairs from jsonl (optionally gzipped) or
parquet, and :class:`DocStore` keeps the passages on disk as a jsonl file plus an ``int64`` offset
array that is memory-mapped at load time. A search then reads only the few lines it returns.

Records use the FlashRAG / Search-R1 layout ``{"id": "0", "contents": "\\"Title\\"\\ntext"}``; a
record with ``title`` and ``text`` instead of ``contents`` is converted to that layout.
"""

from __future__ import annotations

import gzip
import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .base import Doc

__all__ = [
    "DocStore",
    "INDEX_META",
    "iter_corpus",
    "read_index_meta",
    "write_index_meta",
]

#: name of the small json file that says what kind of index a directory holds
INDEX_META = "ssrl_index.json"
_DOCS = "docs.jsonl"
_OFFSETS = "offsets.npy"


def _record_to_pair(record: Any, where: str) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "contents" in record:
        contents = record["contents"]
    elif "text" in record:
        title = record.get("title") or ""
        contents = f'"{title}"\n{record["text"]}' if title else str(record["text"])
    else:
        raise ValueError(f"{where}: record needs 'contents' (or 'title' + 'text'), got keys {sorted(record)}")
    if "id" not in record:
        raise ValueError(f"{where}: record has no 'id' field (keys {sorted(record)})")
    return str(record["id"]), str(contents)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from e
            yield _record_to_pair(record, where)


def _iter_parquet(path: Path, batch_size: int = 8192) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq  # optional; only parquet corpora need it

    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    columns = ["id", "contents"] if "contents" in names else ["id", "title", "text"]
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: parquet corpus lacks columns {missing} (has {sorted(names)})")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        for record in batch.to_pylist():
            row += 1
            yield _record_to_pair(record, f"{path}: row {row}")


def iter_corpus(path: str | os.PathLike[str], limit: int | None = None) -> Iterator[tuple[str, str]]:
    """Stream ``(id, contents)`` from a ``.jsonl``/``.jsonl.gz``/``.parquet`` corpus, in file order.

    ``limit`` stops after that many passages (handy for smoke indexes of a big corpus).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        it = _iter_parquet(path)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        it = _iter_jsonl(path)
    else:
        raise ValueError(f"unsupported corpus format {path.name!r}: use .jsonl, .jsonl.gz or .parquet")
    for n, pair in enumerate(it):
        if limit is not None and n >= limit:
            return
        yield pair


class DocStore:
    """Passages on disk, addressed by their row number in the index.

    Reads use ``os.pread`` on one descriptor, so concurrent searches from several threads need no
    lock, and the resident memory is the offset array (8 bytes per passage, memory-mapped) plus
    whatever the OS page cache keeps.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import numpy as np

        self.directory = Path(directory)
        docs, offsets = self.directory / _DOCS, self.directory / _OFFSETS
        if not docs.is_file() or not offsets.is_file():
            raise FileNotFoundError(f"{self.directory} has no passage store ({_DOCS} + {_OFFSETS})")
        self._offsets = np.load(offsets, mmap_mode="r")
        self._fd = os.open(docs, os.O_RDONLY)

    @staticmethod
    def write(records: Iterable[tuple[str, str]], directory: str | os.PathLike[str]) -> Iterator[str]:
        """Write ``records`` to ``directory`` while yielding each ``contents`` in order.

        Yielding lets an index builder tokenize or encode the passages in the same single pass
        over the corpus; the store is complete once the generator is exhausted.
        """
        import numpy as np

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        offsets = array("q", [0])
        with open(directory / _DOCS, "wb") as f:
            for doc_id, contents in records:
                line = json.dumps({"id": doc_id, "contents": contents}, ensure_ascii=False) + "\n"
                f.write(line.encode("utf-8"))
                offsets.append(f.tell())
                yield contents
        np.save(directory / _OFFSETS, np.frombuffer(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, row: int) -> tuple[str, str]:
        """``(id, contents)`` of the passage at index row ``row``."""
        if not 0 <= row < len(self):
            raise IndexError(f"passage row {row} out of range (store has {len(self)})")
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        record = json.loads(os.pread(self._fd, end - start, start))
        return record["id"], record["contents"]

    def get_many(self, rows: Sequence[int]) -> list[tuple[str, str]]:
        return [self.get(int(r)) for r in rows]

    def hits_to_docs(self, rows: Any, scores: Any, keep: Any) -> list[list[Doc]]:
        """One ``Doc`` list per query from an index's (rows, scores) matrices, dropping the hits
        for which ``keep(row, score)`` is false (BM25: zero score; faiss: -1 padding rows)."""
        return [
            [
                Doc(*self.get(int(row)), float(score))
                for row, score in zip(row_ids, row_scores, strict=True)
                if keep(row, score)
            ]
            for row_ids, row_scores in zip(rows, scores, strict=True)
        ]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)


def write_index_meta(directory: str | os.PathLike[str], kind: str, **info: Any) -> None:
    """Record the index kind and its build settings, so loading needs no flags repeated."""
    meta = {"kind": kind, "format_version": 1, **info}
    (Path(directory) / INDEX_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_index_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / INDEX_META
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an ssrl-trl index (no {INDEX_META}); build one with "
            "`ssrl-trl index --corpus FILE --kind bm25|dense --out DIR`"
        )
    return json.loads(path.read_text(encoding="utf-8"))
