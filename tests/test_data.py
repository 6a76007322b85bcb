"""QA sources -> prompt rows: ids qualified by source, duplicates rejected, weighted mixing."""

from __future__ import annotations

import json

import pytest

from ssrl_trl.data import Source, build_prompt_rows, load_source, mix_sources
from ssrl_trl.protocol import SEARCH_R1


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_ids_are_qualified_by_source_so_restarting_indices_cannot_collide(tmp_path):
    a = _write(
        tmp_path / "nq.jsonl",
        [{"question": "q0", "golden_answers": ["a"]}, {"question": "q1", "answer": "b"}],
    )
    b = _write(
        tmp_path / "hotpot.jsonl", [{"question": "q0", "reward_model": {"ground_truth": {"target": ["c"]}}}]
    )
    items = mix_sources([(load_source(Source(a)), 1.0), (load_source(Source(b)), 1.0)], None)
    assert sorted(i.id for i in items) == ["hotpot:0", "nq:0", "nq:1"]
    assert {i.id: i.golden_answers for i in items} == {"nq:0": ["a"], "nq:1": ["b"], "hotpot:0": ["c"]}
    rows = build_prompt_rows(items, "Q: {question}", SEARCH_R1)
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["id"] in {"hotpot:0", "nq:0", "nq:1"}


def test_the_same_source_twice_is_an_error_naming_the_fix(tmp_path):
    a = _write(tmp_path / "nq.jsonl", [{"question": "q0", "golden_answers": ["a"]}])
    with pytest.raises(ValueError, match="duplicate question id 'nq:0'.*distinct names"):
        mix_sources([(load_source(Source(a)), 1.0), (load_source(Source(a)), 1.0)], None)


def test_weighted_mix_samples_by_weight(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"question": f"a{i}", "golden_answers": ["x"]} for i in range(50)])
    b = _write(tmp_path / "b.jsonl", [{"question": f"b{i}", "golden_answers": ["x"]} for i in range(50)])
    items = mix_sources([(load_source(Source(a)), 3.0), (load_source(Source(b)), 1.0)], total=40, seed=1)
    assert sum(i.id.startswith("a:") for i in items) == 30 and sum(i.id.startswith("b:") for i in items) == 10


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"golden_answers": ["x"]}, "no 'question' field"),
        ({"question": "q"}, "golden_answers"),
        ({"question": " ", "answer": "x"}, "empty question"),
    ],
)
def test_bad_rows_name_the_row_and_the_field(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [row])
    with pytest.raises((KeyError, ValueError), match=message):
        load_source(Source(path))
