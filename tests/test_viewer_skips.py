"""The viewer on a damaged rollout log: it draws every good record and lists the lines it skipped
(a torn last line, lines that are not records, records whose fields cannot be drawn)."""

from __future__ import annotations

import json

from ssrl_trl.viewer import load_records, main, record_problem


def _record(n: int, **over) -> dict:
    rec = {
        "rollout_id": f"r{n}",
        "step": n,
        "prompt": f"question {n}",
        "completion_ids": [11, 12, 13],
        "env_mask": [1, 1, 0],
        "segments": [
            {"kind": "model", "start": 0, "end": 2, "text": "ab"},
            {"kind": "information", "start": 2, "end": 3, "text": "c"},
        ],
        "rewards": {"em": 1.0},
        "answer": "x",
    }
    rec.update(over)
    return rec


BAD = {
    2: "not json {",
    3: json.dumps(["a", "list"]),
    4: json.dumps(_record(9, env_mask="111")),
    5: json.dumps(_record(9, segments=[{"kind": "model", "start": 0, "end": 99}])),
    6: json.dumps(_record(9, rewards={"em": "yes"})),
    7: json.dumps(_record(9, step=[1])),
}


def _damaged_log(tmp_path):
    lines = [json.dumps(_record(0))] + [BAD[n] for n in sorted(BAD)] + [json.dumps(_record(1))]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(lines) + "\n" + json.dumps(_record(2))[:50], encoding="utf-8")
    return path


def test_damaged_lines_are_skipped_and_listed_and_the_rest_is_drawn(tmp_path, capsys):
    log, page = _damaged_log(tmp_path), tmp_path / "page.html"
    assert main([str(log), "-o", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert (
        html.count('class="traj"') == 2 and 'data-rollout-id="r0"' in html and 'data-rollout-id="r1"' in html
    )
    assert "7 line(s) of the log skipped" in html
    for line in (2, 3, 4, 5, 6, 7, 9):
        assert f"<li>line {line}: " in html
    captured = capsys.readouterr()
    assert "2 trajectories, 7 lines skipped" in captured.out
    assert f"skipped {log}:9: torn last line" in captured.err and "Traceback" not in captured.err


def test_load_records_reports_why_each_line_was_skipped(tmp_path):
    records, skipped = load_records(_damaged_log(tmp_path))
    assert [r["rollout_id"] for r in records] == ["r0", "r1"]
    reasons = {b.line: b.reason for b in skipped}
    assert reasons[2].startswith("not valid JSON") and reasons[3] == "not a JSON object (got list)"
    assert reasons[4] == "env_mask is not a list of 0/1" and "outside the 3 tokens" in reasons[5]
    assert reasons[6] == "rewards is not a mapping of names to numbers" and "step is a list" in reasons[7]
    assert record_problem(_record(0)) is None


def test_a_missing_log_is_still_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read")
