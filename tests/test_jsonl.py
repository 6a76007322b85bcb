"""Append-safe JSONL (``ssrl_trl.jsonl``): what a process killed mid-write leaves is read, repaired
and rewritten without losing or gluing records."""

from __future__ import annotations

import json
import re

import pytest

from ssrl_trl.jsonl import BadLine, JsonlError, atomic_write, filter_jsonl, read_jsonl, repair_tail

A, B, C = ({"id": "a", "step": 0}, {"id": "b", "step": 1}, {"id": "c", "step": 2, "text": "café ✓"})


def _lines(*records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_a_torn_last_line_is_skipped_and_cut_off_before_appending(tmp_path):
    path = tmp_path / "log.jsonl"
    whole = _lines(A, B, C).encode()
    for cut in range(len(_lines(A, B).encode()) + 1, len(whole) - 1):  # every byte of the last record
        path.write_bytes(whole[:cut])
        content = read_jsonl(path, required=("id",))
        assert content.records == [A, B] and content.torn_line == 3, cut
        assert "dropped a torn last line" in repair_tail(path)
        assert path.read_bytes() == _lines(A, B).encode()


def test_a_record_without_its_final_newline_is_kept_and_the_newline_added(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(_lines(A, B).rstrip("\n"), encoding="utf-8")
    content = read_jsonl(path)
    assert content.records == [A, B] and content.missing_newline and not content.torn_tail
    assert "added the missing newline" in repair_tail(path)
    with path.open("a", encoding="utf-8") as fh:  # the append that used to glue two records
        fh.write(json.dumps(C, ensure_ascii=False) + "\n")
    assert read_jsonl(path).records == [A, B, C]
    assert repair_tail(path) is None and repair_tail(tmp_path / "missing.jsonl") is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json at all", "not valid JSON"),
        ('["a", "list"]', "not a JSON object (got list)"),
        ("42", "not a JSON object (got int)"),
        ('{"step": 3}', "record without 'id'"),
    ],
)
def test_a_bad_line_names_file_and_line_or_is_listed(tmp_path, line, reason):
    path = tmp_path / "log.jsonl"
    path.write_text(_lines(A) + line + "\n" + _lines(B), encoding="utf-8")
    with pytest.raises(JsonlError, match=rf"log\.jsonl:2: {re.escape(reason)}") as info:
        read_jsonl(path, required=("id",))
    assert info.value.line == 2 and isinstance(info.value, ValueError)
    lenient = read_jsonl(path, required=("id",), strict=False)
    assert lenient.records == [A, B] and lenient.line_numbers == [1, 3]
    assert [b.line for b in lenient.bad] == [2] and reason in lenient.bad[0].reason


def test_a_complete_but_bad_last_line_is_corruption_not_a_torn_write(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(_lines(A) + '["x"]', encoding="utf-8")
    with pytest.raises(JsonlError, match=":2: not a JSON object"):
        read_jsonl(path)
    assert read_jsonl(path, strict=False).bad == [BadLine(2, "not a JSON object (got list)")]


def test_a_cut_multibyte_character_is_a_torn_tail_not_a_decode_error(tmp_path):
    path = tmp_path / "log.jsonl"
    data = _lines(A, C).encode()
    path.write_bytes(data[: data.index("✓".encode()) + 1])  # inside the 3-byte character
    assert read_jsonl(path).records == [A] and read_jsonl(path).torn_tail


def test_filter_keeps_lines_byte_for_byte_and_rewrites_atomically(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    odd = '{"id": "a",   "step": 0}\n'  # spacing json.dumps would not produce
    path.write_text(odd + "garbage line\n" + _lines(B, C) + '{"id": "d", "st', encoding="utf-8")
    kept, dropped = filter_jsonl(path, lambda rec: rec["step"] < 2)
    assert (kept, dropped) == (2, 2)  # C (step 2) and the torn tail
    assert path.read_text(encoding="utf-8") == odd + "garbage line\n" + _lines(B)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left
    before = path.stat().st_mtime_ns
    assert filter_jsonl(path, lambda rec: True) == (2, 0) and path.stat().st_mtime_ns == before


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.jsonl"
    path.write_text("old\n")

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ssrl_trl.jsonl.os.replace", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["f.jsonl"]
