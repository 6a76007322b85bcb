"""Resuming an evaluation into a ``predictions_<arm>.jsonl`` left damaged: a record without its final
newline is not glued to the next one, and a bad line is reported with file and line."""

from __future__ import annotations

import json

import pytest

from ssrl_trl.data import QAItem
from ssrl_trl.environments import SelfSearchEnv
from ssrl_trl.evaluation.runner import Arm, read_predictions, run_arm
from ssrl_trl.jsonl import JsonlError
from ssrl_trl.prompts import TEMPLATES
from ssrl_trl.protocol import SSRL
from ssrl_trl.rollout import Budgets, SamplingConfig, ScriptedBackend

ITEMS = [QAItem(f"q:{i}", f"What is item {i}?", [f"answer {i}"], "toy") for i in range(4)]


def _backend(tokenizer):
    def script(ids, call):
        question = tokenizer.decode(ids)
        item = next(it for it in ITEMS if it.question in question)
        return f"<think>t</think><answer>{item.golden_answers[0]}</answer>"

    return ScriptedBackend(tokenizer, script)


def _arm():
    budgets = Budgets(max_turns=1, max_tokens_per_turn=48, max_completion_tokens=48)
    return Arm("self", SelfSearchEnv(SSRL), TEMPLATES["ssrl"], budgets, SamplingConfig(temperature=0.0))


def _run(tokenizer, out, items=ITEMS, backend=None):
    return run_arm(
        _arm(), items, backend or _backend(tokenizer), tokenizer, out, batch_size=1, progress=False
    )


def _ids_per_line(path):
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_last_record_without_its_newline_is_not_glued_to_the_next(tokenizer, tmp_path):
    first = _run(tokenizer, tmp_path, ITEMS[:2])
    path = tmp_path / "predictions_self.jsonl"
    path.write_text(path.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")  # lost its last byte
    second = _run(tokenizer, tmp_path)
    assert second.new_questions == 2 and second.records[:2] == first.records
    assert _ids_per_line(path) == [it.id for it in ITEMS]  # one record per line
    backend = _backend(tokenizer)
    third = _run(tokenizer, tmp_path, backend=backend)  # and the file stays resumable
    assert third.new_questions == 0 and backend.calls == 0 and third.records == second.records


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('["not", "an", "object"]', "not a JSON object"),
        ('{"question": "no id"}', "record without 'id'"),
        ("{broken", "not valid JSON"),
    ],
)
def test_a_bad_line_is_reported_with_file_and_line(tokenizer, tmp_path, line, reason):
    _run(tokenizer, tmp_path, ITEMS[:2])
    path = tmp_path / "predictions_self.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], line, lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(JsonlError, match=rf"predictions_self\.jsonl:2: {reason}.*--overwrite"):
        _run(tokenizer, tmp_path)
    with pytest.raises(ValueError, match=":2: "):
        read_predictions(path)
