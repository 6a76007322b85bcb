"""Shared by the fault-injection tests: start a tiny training run as its own process, wait for a
point in it (a file appearing, a log reaching a size), and check what the run left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from conftest import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
RECORDS_PER_STEP = 4  # write_tiny_recipe: per_device_train_batch_size 4 (one prompt x 4 generations)


def fast_recipe(tmp_path: Path, model_dir: Path, data: Path, steps: int) -> Path:
    """``write_tiny_recipe`` with one 16-token turn per episode: the faults are in the steps and
    saves, not in what is generated, and generation is most of a step's time on a CPU."""
    recipe = write_tiny_recipe(tmp_path, model_dir, data, steps=steps)
    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    config["budgets"] = {"max_turns": 1, "max_tokens_per_turn": 16, "max_obs_tokens": 16}
    config["grpo"]["max_completion_length"] = 16
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    return recipe


def start_training(recipe: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``python -m ssrl_trl.train --config RECIPE EXTRA...`` in its own process, output to ``log``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ssrl_trl.train", "--config", str(recipe), *extra]
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(proc: subprocess.Popen, log: Path, condition: Callable[[], bool], timeout: float = 90) -> None:
    """Poll ``condition`` every few milliseconds; fail (with the run's output) if the run ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the fault point:\n{tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"fault point not reached in {timeout}s:\n{tail(log)}")
        time.sleep(0.002)


def finish(proc: subprocess.Popen, timeout: float = 90) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no output)"


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def logged_steps(run: Path) -> Counter:
    """How many trajectories ``rollouts.jsonl`` holds per step (every line must be a record)."""
    lines = (run / "rollouts.jsonl").read_text(encoding="utf-8").splitlines()
    return Counter(json.loads(line)["step"] for line in lines)


def trained_steps(run: Path, step: int) -> list[int]:
    """The steps with a loss in ``checkpoint-STEP``'s log history, in order."""
    state = json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [h["step"] for h in state["log_history"] if "loss" in h]


def checkpoints(run: Path) -> dict[int, bool]:
    """Each ``checkpoint-N`` folder and whether it is complete (a parsable trainer_state.json)."""
    out = {}
    for path in run.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            out[int(path.name.split("-")[1])] = True
        except (OSError, ValueError):
            out[int(path.name.split("-")[1])] = False
    return out


def assert_each_step_once(run: Path, steps: int) -> None:
    """Steps 1..steps trained once each, and each step's trajectories logged exactly once."""
    assert trained_steps(run, steps) == list(range(1, steps + 1))
    counts = logged_steps(run)
    assert counts == Counter({s: RECORDS_PER_STEP for s in range(steps)}), counts
