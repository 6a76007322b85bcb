"""Paired before/after comparison: bootstrap intervals, record pairing, the CLI and the learn-check
verdict."""

from __future__ import annotations

import json

import pytest

from ssrl_trl.evaluation.compare import compare_records, format_line, main, paired_bootstrap
from ssrl_trl.learn_check import check
from ssrl_trl.learn_check import main as check_main


def _records(values: list[float], **extra) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "em": v,
            "cover_em": v,
            "f1": v,
            "format_valid": 1.0,
            "answered": 1.0,
            "searches": 1.0,
            **extra,
        }
        for i, v in enumerate(values)
    ]


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    before = [0, 0, 1, 0, 0, 1, 0, 0, 0, 0] * 5
    after = [1, 0, 1, 1, 0, 1, 1, 0, 1, 1] * 5
    a = paired_bootstrap(before, after, seed=3)
    b = paired_bootstrap(before, after, seed=3)
    assert a == b
    assert a["mean"] == pytest.approx(0.5)
    lo, hi = a["ci95"]
    assert lo < 0.5 < hi and lo > 0.3 and hi < 0.7


def test_no_change_gives_an_interval_around_zero():
    values = [0, 1] * 40
    result = paired_bootstrap(values, values)
    assert result == {"mean": 0.0, "ci95": [0.0, 0.0]}
    noisy = paired_bootstrap([0, 1] * 40, [1, 0] * 40)
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]


def test_pairing_is_by_question_id_not_position():
    before = _records([0.0, 1.0, 0.0])
    after = list(reversed(_records([0.0, 1.0, 0.0])))
    result = compare_records(before, after)
    assert result["diff"]["em"]["mean"] == 0.0 and result["n"] == 3


def test_different_question_sets_are_refused():
    with pytest.raises(ValueError, match="different questions"):
        compare_records(_records([0, 1]), _records([0, 1, 1]))


def test_result_has_every_metric_and_a_readable_line():
    result = compare_records(_records([0.0] * 10), _records([1.0] * 6 + [0.0] * 4), seed=0)
    for key in ("em", "cover_em", "f1", "format_valid", "answered", "searches"):
        assert key in result["before"] and key in result["after"] and key in result["diff"]
    assert result["before"]["n"] == result["after"]["n"] == 10
    line = format_line(result, "em")
    assert "0.000 -> 0.600" in line and "+0.600" in line and "n=10" in line


def test_compare_cli_reads_two_eval_folders(tmp_path, capsys):
    for name, values in (("base", [0, 0, 0, 1]), ("trained", [1, 1, 0, 1])):
        folder = tmp_path / name
        folder.mkdir()
        with (folder / "predictions_real.jsonl").open("w") as fh:
            for rec in _records([float(v) for v in values]):
                fh.write(json.dumps(rec) + "\n")
    assert main([str(tmp_path / "base"), str(tmp_path / "trained")]) == 0
    out = json.loads((tmp_path / "trained" / "before_after.json").read_text())
    assert out["diff"]["em"]["mean"] == pytest.approx(0.5) and out["arm"] == "real"
    assert main([str(tmp_path / "base"), str(tmp_path / "missing")]) == 2
    assert "no predictions" in capsys.readouterr().err


def test_learn_check_verdict(tmp_path):
    good = compare_records(_records([0.0] * 50), _records([1.0] * 35 + [0.0] * 15))
    weak = compare_records(_records([0.0] * 50), _records([1.0] * 20 + [0.0] * 30))
    assert check(good, "em", 0.5, 0.3)[0]
    passed, reason = check(weak, "em", 0.5, 0.3)
    assert not passed and "after 0.400 < 0.5" in reason
    path = tmp_path / "before_after.json"
    path.write_text(json.dumps(weak))
    assert check_main([str(path)]) == 1
    path.write_text(json.dumps(good))
    assert check_main([str(path)]) == 0
    assert check_main([str(tmp_path / "nope.json")]) == 2
