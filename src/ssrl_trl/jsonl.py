"""Append-safe JSONL: read, repair and rewrite the logs a killed process may have left half-written.

Every JSONL file here (``predictions_<arm>.jsonl``, ``rollouts.jsonl``) is appended one record per
line by a process that can die at any byte. What that leaves, and what this module does with it:

- a *torn* last line (no final newline and not a complete JSON value): the record was being
  written; readers skip it and :func:`repair_tail` cuts it off before anyone appends again;
- a complete last record that only lacks its newline: kept, and :func:`repair_tail` adds the
  newline, so the next append does not glue two records into one line;
- a bad line anywhere else (not JSON, not an object, a required key missing): corruption. Strict
  readers raise :class:`JsonlError` naming the file and line; lenient ones report it and go on.

Rewrites go through :func:`atomic_write` (temporary file, fsync, rename), so a file is always
either the old version or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "BadLine",
    "JsonlContent",
    "JsonlError",
    "atomic_write",
    "filter_jsonl",
    "read_jsonl",
    "repair_tail",
]


class JsonlError(UserError):
    """A malformed line that is not a torn tail: ``<path>:<line>: <reason>``."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = Path(path), line, reason


@dataclass(frozen=True)
class BadLine:
    """A line a lenient reader skipped (1-based line number and why)."""

    line: int
    reason: str


@dataclass
class JsonlContent:
    """What :func:`read_jsonl` found. ``torn_line``: an unfinished last line was skipped;
    ``missing_newline``: the last record is complete but the file does not end with a newline."""

    records: list[dict[str, Any]] = field(default_factory=list)
    #: 1-based line number of each record, in step with ``records``.
    line_numbers: list[int] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    #: Line number of the torn last line that was skipped, if any.
    torn_line: int | None = None
    missing_newline: bool = False

    @property
    def torn_tail(self) -> bool:
        return self.torn_line is not None


def _split(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Newline-terminated lines, and the unterminated tail (``None`` if the file ends with a newline)."""
    parts = data.split(b"\n")
    tail = parts.pop()
    return parts, (tail if tail else None)


def _load(raw: bytes) -> tuple[Any, str | None]:
    """(value, None), or (None, why ``raw`` is not one complete JSON value)."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"


def _problem(value: Any, required: Sequence[str]) -> str | None:
    """Why a JSON value is not a record, or ``None``."""
    if not isinstance(value, dict):
        return f"not a JSON object (got {type(value).__name__})"
    missing = [k for k in required if k not in value]
    return f"record without {', '.join(repr(k) for k in missing)}" if missing else None


def _parse(raw: bytes, required: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, why the line is not a record)."""
    value, reason = _load(raw)
    reason = reason or _problem(value, required)
    return (None, reason) if reason else (value, None)


def read_jsonl(path: str | Path, *, required: Sequence[str] = (), strict: bool = True) -> JsonlContent:
    """The records of ``path`` in file order; blank lines are ignored and a torn last line skipped.

    ``required`` keys must be in every record. A bad line raises :class:`JsonlError` when
    ``strict``, else it is listed in ``bad``. A missing file reads as empty.
    """
    path = Path(path)
    out = JsonlContent()
    if not path.is_file():
        return out
    lines, tail = _split(path.read_bytes())
    if tail is not None and tail.strip():
        _, torn = _load(tail)
        if torn:
            out.torn_line = len(lines) + 1  # a record cut off mid-write: not corruption, it is redone
        else:
            lines.append(tail)
            out.missing_newline = True
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        record, reason = _parse(raw, required)
        if record is not None:
            out.records.append(record)
            out.line_numbers.append(number)
        elif strict:
            raise JsonlError(path, number, reason or "bad line")
        else:
            out.bad.append(BadLine(number, reason or "bad line"))
    return out


def repair_tail(path: str | Path) -> str | None:
    """Make ``path`` safe to append to; say what was done (``None``: nothing needed).

    A last line without its newline either gets one (it is a complete JSON value) or is cut off
    (it is torn). Only the end of the file is touched, so this is cheap on large logs.
    """
    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        start = _last_line_start(fh, size)
        fh.seek(start)
        tail = fh.read()
        try:
            json.loads(tail.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            fh.truncate(start)
            fh.flush()
            os.fsync(fh.fileno())
            return f"{path}: dropped a torn last line ({len(tail)} bytes of an unfinished record)"
        fh.seek(size)
        fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        return f"{path}: added the missing newline after the last record"


def _last_line_start(fh: Any, size: int, block: int = 65536) -> int:
    """Offset just after the last newline of an open binary file (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        fh.seek(start)
        chunk = fh.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers (and a crash) see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every filesystem allows opening a directory
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def filter_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> tuple[int, int]:
    """Rewrite ``path`` atomically with only the records ``keep`` accepts; returns (kept, dropped).

    Kept lines are copied byte for byte and every line ends with a newline afterwards. A torn
    last line is dropped (counted in ``dropped``); a line that is not a record is kept as it is
    (this only removes what it understands). The file is not touched when nothing changes.
    """
    path = Path(path)
    if not path.is_file():
        return 0, 0
    data = path.read_bytes()
    lines, tail = _split(data)
    torn = False
    if tail is not None:
        torn = _load(tail)[1] is not None and bool(tail.strip())
        if not torn:
            lines.append(tail)  # complete (or blank): kept, with the newline it lacked
    out, kept, dropped = [], 0, int(torn)
    for raw in lines:
        record = _parse(raw, ())[0] if raw.strip() else None
        if record is not None and not keep(record):
            dropped += 1
            continue
        kept += record is not None
        out.append(raw + b"\n")
    new = b"".join(out)
    if new != data:
        atomic_write(path, new)
    return kept, dropped
