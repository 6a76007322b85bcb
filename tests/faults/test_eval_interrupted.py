"""An evaluation killed while appending ``predictions_<arm>.jsonl``, then resumed: every question is
answered once, one record per line, and the file stays resumable, whatever byte the kill hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_driver import arm, backend, items
from fault_helpers import REPO, line_count

from ssrl_trl.evaluation.runner import run_arm

pytestmark = pytest.mark.timeout(120)

N = 6


@pytest.fixture(scope="module")
def killed(tiny_model_dir, tmp_path_factory) -> bytes:
    """The predictions file of an evaluation SIGKILLed after its second record."""
    out = tmp_path_factory.mktemp("eval_killed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    driver = Path(__file__).with_name("eval_driver.py")
    cmd = [sys.executable, str(driver), str(tiny_model_dir), str(out), str(N), "0.3"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    path = out / "predictions_self.jsonl"
    deadline = time.monotonic() + 90
    while line_count(path) < 2:
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert time.monotonic() < deadline, "the evaluation wrote no records"
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=30)
    data = path.read_bytes()
    assert 2 <= data.count(b"\n") < N
    return data


def _damage(data: bytes, how: str) -> bytes:
    """The file as a kill at another byte would have left it (the driver's records hold 'é's, so a
    cut can fall inside a multi-byte character)."""
    whole = data[: data.rindex(b"\n") + 1]
    last_start = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    if how == "as killed":
        return data
    if how == "mid record":
        return whole[: last_start + (len(whole) - last_start) // 2]
    if how == "mid character":
        return whole[: whole.rindex("é".encode()) + 1]
    return whole[:-1]  # "only the newline lost"


@pytest.mark.parametrize("how", ["as killed", "mid record", "mid character", "only the newline lost"])
def test_resumed_evaluation_answers_every_question_once(tokenizer, killed, tmp_path, how):
    path = tmp_path / "predictions_self.jsonl"
    path.write_bytes(_damage(killed, how))
    (tmp_path / "self.settings.json").write_text(json.dumps(arm().settings()))
    questions = items(N)
    done = run_arm(arm(), questions, backend(tokenizer, questions, 0), tokenizer, tmp_path, progress=False)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == [q.id for q in questions]
    assert [r["em"] for r in done.records] == [1.0] * N
    again = run_arm(arm(), questions, backend(tokenizer, questions, 0), tokenizer, tmp_path, progress=False)
    assert again.new_questions == 0 and line_count(path) == N
