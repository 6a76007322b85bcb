"""Resuming (``ssrl_trl.checkpoints`` via ``train._resume_path``): half-written checkpoints are
skipped and removed, rollout records of steps that run again are dropped, and the SIGTERM
callback turns a signal into a save and a stop through TrainerControl flags only."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from ssrl_trl.checkpoints import checkpoint_problem, find_resumable, prepare_resume, prune_rollout_logs
from ssrl_trl.graceful_stop import GracefulStop
from ssrl_trl.recipe import RecipeError
from ssrl_trl.train import _resume_path


def _checkpoint(run, step, *, state: str | None = "ok"):
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    elif state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def _log(path, steps):
    path.write_text(
        "".join(json.dumps({"rollout_id": f"r{i}", "step": s}) + "\n" for i, s in enumerate(steps))
    )


def test_auto_resume_skips_and_removes_half_written_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    _checkpoint(run, 2)
    _checkpoint(run, 3)
    _checkpoint(run, 4, state=None)  # killed before trainer_state.json was written
    _checkpoint(run, 5, state='{"global_step": 5, "log_hi')  # killed while writing it
    _checkpoint(run, 6, state=json.dumps({"global_step": 2}))  # not the state of step 6
    resumed = _resume_path("auto", str(run))
    assert resumed == str(run / "checkpoint-3")
    out = capsys.readouterr().out
    assert "skipped incomplete checkpoint-6: trainer_state.json is for step 2, not 6; removed it" in out
    assert "skipped incomplete checkpoint-5: trainer_state.json is cut off" in out
    assert "skipped incomplete checkpoint-4: no trainer_state.json" in out
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-3"]  # complete or absent


def test_an_explicit_incomplete_checkpoint_is_refused_with_a_message(tmp_path):
    partial = _checkpoint(tmp_path / "run", 4, state=None)
    with pytest.raises(RecipeError, match="not a complete checkpoint .no trainer_state.json"):
        _resume_path(str(partial), str(tmp_path / "run"))
    with pytest.raises(RecipeError, match="no such checkpoint directory"):
        _resume_path(str(tmp_path / "nope"), str(tmp_path / "run"))
    assert partial.is_dir()  # named explicitly: reported, never deleted


def test_resume_drops_rollout_records_of_steps_that_run_again(tmp_path, capsys):
    run = tmp_path / "run"
    _checkpoint(run, 3)
    _log(run / "rollouts.jsonl", [0, 0, 1, 1, 2, 2, 3, 3, 4])  # killed during step 5's save
    (run / "rollouts.jsonl").write_text((run / "rollouts.jsonl").read_text() + '{"step": 4, "rol')
    assert _resume_path("auto", str(run)) == str(run / "checkpoint-3")
    steps = [json.loads(line)["step"] for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert steps == [0, 0, 1, 1, 2, 2]
    assert "rollouts.jsonl: dropped 4 record(s) of steps >= 3" in capsys.readouterr().out


def test_resume_without_a_checkpoint_starts_at_step_zero_and_without_resume_touches_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _log(run / "rollouts.jsonl", [0, 0, 1])
    assert (
        _resume_path(None, str(run)) is None and len((run / "rollouts.jsonl").read_text().splitlines()) == 3
    )
    assert _resume_path("auto", str(run)) is None
    assert (run / "rollouts.jsonl").read_text() == ""
    assert _resume_path("auto", str(tmp_path / "not-yet")) is None


def test_each_rank_prunes_only_its_own_log(tmp_path):
    for name in ("rollouts.jsonl", "rollouts.rank1.jsonl", "rollouts.rank2.jsonl"):
        _log(tmp_path / name, [0, 1, 2])
    assert prune_rollout_logs(tmp_path, 1, rank=1, world_size=2, echo=lambda m: None) == {
        "rollouts.rank1.jsonl": 2
    }
    # Rank 0 also owns the log of rank 2, which the current world (2 ranks) does not have.
    dropped = prune_rollout_logs(tmp_path, 1, rank=0, world_size=2, echo=lambda m: None)
    assert dropped == {"rollouts.jsonl": 2, "rollouts.rank2.jsonl": 2}


def test_prepare_resume_uses_the_checkpoints_own_step_for_an_explicit_folder(tmp_path):
    run = tmp_path / "run"
    elsewhere = _checkpoint(tmp_path / "other", 2)
    run.mkdir()
    _log(run / "rollouts.jsonl", [0, 1, 2, 3])
    assert prepare_resume(str(elsewhere), run, echo=lambda m: None) == str(elsewhere)
    assert [json.loads(x)["step"] for x in (run / "rollouts.jsonl").read_text().splitlines()] == [0, 1]
    assert checkpoint_problem(elsewhere) is None and find_resumable(tmp_path / "none").checkpoint is None


def _flow(tmp_path, step):
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=step, is_world_process_zero=True)
    return args, state, TrainerControl()


def test_sigterm_sets_save_and_stop_at_the_end_of_the_step(tmp_path, capsys):
    stop = GracefulStop()
    args, state, control = _flow(tmp_path, 3)
    previous = signal.getsignal(signal.SIGTERM)
    stop.on_train_begin(args, state, control)
    try:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.on_step_end(args, state, control)
        assert not (control.should_save or control.should_training_stop)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: only a flag is set
        assert stop.requested and not stop.stopped
        stop.on_step_end(args, state, control)
        assert (
            control.should_save and control.should_training_stop and stop.saving == tmp_path / "checkpoint-3"
        )
        stop.on_save(args, state, control)
        assert stop.saving is None and stop.stopped and stop.exit_code == 143
    finally:
        stop.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGTERM) == previous
    assert "stopped after step 3 on SIGTERM; saved checkpoint-3" in capsys.readouterr().out


def test_sigterm_during_a_save_stops_after_that_save(tmp_path):
    stop = GracefulStop()
    args, state, control = _flow(tmp_path, 5)
    stop.on_train_begin(args, state, control)
    try:
        control.should_save = True  # the step's regular save is about to run
        stop.on_step_end(args, state, control)
        assert stop.saving == tmp_path / "checkpoint-5" and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)
        stop.on_save(args, state, control)
        assert control.should_training_stop and stop.stopped
    finally:
        stop.on_train_end(args, state, control)
