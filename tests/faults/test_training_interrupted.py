"""A tiny training run interrupted at different points, then ``--resume auto``: it must reach
``max_steps`` with every step trained once and its trajectories logged once.

Each run is a real ``python -m ssrl_trl.train`` process; the fault is sent from here when a file
shows the run has reached the point (a checkpoint folder appearing, the rollout log growing).
The resumed run is in-process (no second interpreter start-up).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from fault_helpers import (
    RECORDS_PER_STEP,
    assert_each_step_once,
    checkpoints,
    fast_recipe,
    finish,
    line_count,
    start_training,
    tail,
    wait_for,
)

from ssrl_trl.train import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

STEPS = 3


def _resume(recipe: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["--config", str(recipe), "--resume", "auto"]) == 0
    return capsys.readouterr().out


def test_sigterm_mid_step_finishes_the_step_saves_and_stops(tmp_path, tiny_model_dir, shared_data, capsys):
    recipe = fast_recipe(tmp_path, tiny_model_dir, shared_data, STEPS)
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_training(recipe, log)
    wait_for(proc, log, lambda: (run / "checkpoint-1" / "trainer_state.json").is_file())
    proc.send_signal(signal.SIGTERM)  # during step 2 (or the tail of step 1's save)
    assert finish(proc) == 128 + signal.SIGTERM, tail(log)
    out = tail(log)
    assert "SIGTERM: finishing the current step" in out and "Traceback" not in out, out
    saved = checkpoints(run)
    last = max(saved)
    assert all(saved.values()) and f"stopped after step {last} on SIGTERM; saved checkpoint-{last}" in out
    assert not (run / "summary.json").exists()  # a cut run writes no final summary
    printed = _resume(recipe, capsys)
    assert f"resume: from {run / f'checkpoint-{last}'} (step {last})" in printed
    assert_each_step_once(run, STEPS)


def test_sigkill_after_a_step_is_logged_then_resume_logs_each_step_once(
    tmp_path, tiny_model_dir, shared_data, capsys
):
    recipe = fast_recipe(tmp_path, tiny_model_dir, shared_data, STEPS)
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_training(recipe, log)
    # Step 2's trajectories are in the log; its checkpoint is not saved yet (backward, optimizer, save).
    wait_for(proc, log, lambda: line_count(run / "rollouts.jsonl") >= 2 * RECORDS_PER_STEP)
    proc.kill()
    proc.wait(timeout=30)
    before = line_count(run / "rollouts.jsonl")
    last = max((n for n, ok in checkpoints(run).items() if ok), default=0)
    printed = _resume(recipe, capsys)
    if before > last * RECORDS_PER_STEP:  # the kill left records of a step that runs again
        assert f"rollouts.jsonl: dropped {before - last * RECORDS_PER_STEP} record(s)" in printed, printed
    assert_each_step_once(run, STEPS)


def test_second_sigterm_during_a_save_abandons_it_cleanly(tmp_path, tiny_model_dir, shared_data, capsys):
    recipe = fast_recipe(tmp_path, tiny_model_dir, shared_data, STEPS)
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_training(recipe, log)
    wait_for(proc, log, lambda: (run / "checkpoint-2").is_dir())
    proc.send_signal(signal.SIGTERM)
    # Two signals that arrive before Python runs the handler count once: wait for the first to land.
    wait_for(proc, log, lambda: "SIGTERM: finishing the current step" in tail(log))
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, tail(log)
    out = tail(log)
    assert "second SIGTERM: stopping now" in out and "Traceback" not in out, out
    assert all(checkpoints(run).values()), checkpoints(run)  # complete or absent, never half-written
    _resume(recipe, capsys)
    assert_each_step_once(run, STEPS)


def test_sigkill_during_a_save_leaves_a_partial_checkpoint_that_resume_skips(
    tmp_path, tiny_model_dir, shared_data, capsys
):
    recipe = fast_recipe(tmp_path, tiny_model_dir, shared_data, STEPS)
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_training(recipe, log)
    wait_for(proc, log, lambda: (run / "checkpoint-2" / "model.safetensors").is_file())
    proc.kill()  # SIGKILL (the OOM killer, a node loss): no handler runs
    proc.wait(timeout=30)
    partial = not checkpoints(run).get(2, True)
    if not partial:  # the save won the race: make the partial folder the kill would have left
        (run / "checkpoint-2" / "trainer_state.json").unlink()
    printed = _resume(recipe, capsys)
    assert "skipped incomplete checkpoint-2: no trainer_state.json" in printed, printed
    assert f"resume: from {run / 'checkpoint-1'} (step 1)" in printed
    assert_each_step_once(run, STEPS)


def _tmpfs_problem() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs to fill needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.mark.skipif(_tmpfs_problem() is not None, reason=str(_tmpfs_problem()))
def test_full_disk_during_a_save_then_resume(tmp_path, tiny_model_dir, shared_data, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    # One checkpoint of the tiny model is ~38 MB (weights + Adam state): the second does not fit.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=56m", "tmpfs", str(disk)], check=False)
    if mounted.returncode != 0:
        pytest.skip("this container may not mount a tmpfs (no CAP_SYS_ADMIN)")
    try:
        recipe = fast_recipe(tmp_path, tiny_model_dir, shared_data, STEPS)
        config = recipe.read_text().replace(str(tmp_path / "run"), str(disk / "run"))
        recipe.write_text(config)
        run, log = disk / "run", tmp_path / "run.log"
        proc = start_training(recipe, log)
        assert finish(proc) != 0, tail(log)
        assert checkpoints(run).get(1) is True and checkpoints(run).get(2) is False, (
            checkpoints(run),
            tail(log),
        )
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)  # space freed
        printed = _resume(recipe, capsys)
        assert "skipped incomplete checkpoint-2" in printed, printed
        assert_each_step_once(run, STEPS)
        assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
