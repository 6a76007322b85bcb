"""Two ranks on one machine: ``accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml``
(torchrun, gloo on the CPU) trains the tiny model with both environments, and the launch that
silently runs one process is named at start.

TRL's ``RepeatSampler`` lays each generation batch out as consecutive groups of
``num_generations`` copies of a prompt across the *global* batch, then hands each rank a
contiguous slice of ``per_device_train_batch_size`` rows; rewards are gathered and advantages
computed per group over the whole batch. So a group may straddle two ranks (with 3 rows per rank
and groups of 2, the middle group does), and what must hold is that rank 0's rows followed by
rank 1's rows of a step form intact groups.

How many processes a launch really started is read from the launcher's variables
(:mod:`ssrl_trl.launch_check`); a second test runs the real launchers on a script without a model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_tiny_recipe
from ssrl_trl.launch_check import World, launch_warning

CPU_DDP = REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"
RANKS, PER_DEVICE, GROUP, STEPS = 2, 3, 2, 2


def _launch(target: list[str], launch: list[str] | None = None, timeout: float = 300) -> str:
    """Run ``accelerate launch`` (by default with the shipped CPU config) on ``target``; the
    combined output of the launcher and all ranks."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    launch = ["--config_file", str(CPU_DDP)] if launch is None else launch
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, *target]
    pipe, merged = subprocess.PIPE, subprocess.STDOUT
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=pipe, stderr=merged, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        out, _ = proc.communicate()
        pytest.fail(f"the launch did not finish in {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def _recipe(tmp_path: Path, model_dir: Path, data: Path, method: str) -> Path:
    recipe = write_tiny_recipe(tmp_path, model_dir, data, method=method, steps=STEPS)
    spec = yaml.safe_load(recipe.read_text())
    spec["grpo"].update(per_device_train_batch_size=PER_DEVICE, num_generations=GROUP, save_steps=STEPS)
    if method != "ssrl":
        # Built here, once: two ranks that find the index missing both build it into the same
        # folder at their first rollout, and one of them can read it half-written.
        from ssrl_trl.retrieval.bm25 import BM25Index
        from ssrl_trl.retrieval.corpus import iter_corpus

        BM25Index.build(iter_corpus(tmp_path / "corpus.jsonl"), tmp_path / "bm25", show_progress=False)
        # The held-out evaluation runs on rank 0 while rank 1 waits at a barrier (before, every
        # step, after).
        spec["data"]["eval"] = [{"path": str(data / "qa" / "bamboogle_test.jsonl"), "limit": 2}]
        spec["evaluation"] = {"every_steps": 1, "batch_size": 2, "resamples": 100}
    recipe.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return recipe


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ssrl", "search_r1"])
def test_two_ranks_on_cpu_train_with_intact_groups(tmp_path, tiny_model_dir, shared_data, method):
    out = _launch(
        ["-m", "ssrl_trl.train", "--config", str(_recipe(tmp_path, tiny_model_dir, shared_data, method))]
    )
    assert out.count("[ssrl-trl] world size") == 1 and "world size 2 (MULTI_CPU, gloo)" in out
    assert "[ssrl-trl] rank 1 of 2 (local 1)" in out and "[ssrl-trl] WARNING" not in out
    assert out.count("=== ssrl-trl run summary ===") == 1  # the main process only

    run = tmp_path / "run"
    logs = [_records(run / "rollouts.jsonl"), _records(run / "rollouts.rank1.jsonl")]
    for log in logs:  # each rank its own trajectories: PER_DEVICE per step
        assert len(log) == PER_DEVICE * STEPS
        for r in log:
            assert len(r["completion_ids"]) == len(r["env_mask"]) > 0 and set(r["env_mask"]) <= {0, 1}
            assert len(r["rewards"]) == 2 and None not in r["rewards"].values()
    assert not {r["rollout_id"] for r in logs[0]} & {r["rollout_id"] for r in logs[1]}
    for step in range(STEPS):
        rows = [r for log in logs for r in log if r["step"] == step]  # rank 0's rows, then rank 1's
        assert len(rows) == RANKS * PER_DEVICE
        groups = [rows[i : i + GROUP] for i in range(0, len(rows), GROUP)]
        assert all(len({r["prompt"] for r in g}) == 1 for g in groups)
        assert len({g[0]["prompt"] for g in groups}) == len(groups)  # distinct questions
        ranks_of_step = [[r for r in log if r["step"] == step] for log in logs]
        assert ranks_of_step[0][-1]["prompt"] == ranks_of_step[1][0]["prompt"]  # the straddling group

    state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS == state["max_steps"]
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    if method != "ssrl":
        assert out.count("held-out evaluation (before)") == 1
        assert json.loads((run / "before_after.json").read_text())["n"] == 2
        for name in ("before", "step-1", "after"):
            assert len((run / "heldout" / name / "predictions_heldout.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "launch, world",
    [
        (None, "world size 2 (MULTI_CPU, gloo)"),  # recipes/accelerate/cpu_ddp.yaml: 2 ranks
        (
            ["--multi_gpu", "--num_processes", "2", "--main_process_port", "0"],
            "world size 2 (MULTI_CPU, gloo)",
        ),
        (["--cpu", "--num_processes", "2"], "world size 1 (not distributed)"),  # the trap
    ],
)
def test_what_accelerate_launch_starts_is_read_from_its_variables(tmp_path, launch, world):
    """The real launcher's variables, read in each launched process (no model: seconds)."""
    script = tmp_path / "announce.py"
    script.write_text(
        "from accelerate import Accelerator\n"
        "from ssrl_trl.launch_check import announce_world\n"
        "announce_world(Accelerator(cpu=True))\n"
    )
    out = _launch([str(script)], launch, timeout=120)
    assert out.count("[ssrl-trl] world size") == 1 and world in out
    assert ("[ssrl-trl] rank 1 of 2" in out) == ("2 (MULTI_CPU" in world)
    trap = launch is not None and launch[:3] == ["--cpu", "--num_processes", "2"]
    assert ("[ssrl-trl] WARNING: accelerate was asked for more than one process" in out) == trap


class _Accelerator:
    """What :class:`World` reads from an ``accelerate.Accelerator``."""

    def __init__(self, n: int, index: int, kind: str = "MULTI_CPU", backend: str | None = "gloo"):
        self.num_processes, self.process_index, self.local_process_index = n, index, index
        self.device, self.distributed_type = "cpu", kind

        class State:
            pass

        self.state = State()
        self.state.backend = backend


# The variables accelerate 1.15's launchers set (measured with `accelerate launch ... env`).
_SIMPLE_2 = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
_SIMPLE_1 = {"ACCELERATE_USE_CPU": "True"}
_TORCHRUN_2 = {"MASTER_PORT": "41219", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": "2"}


def test_the_single_process_launch_of_cpu_num_processes_2_is_named():
    warning = launch_warning(1, _SIMPLE_2)
    assert warning is not None and "only this one is running" in warning and "cpu_ddp.yaml" in warning


@pytest.mark.parametrize(
    "world, env",
    [(1, _SIMPLE_1), (1, {}), (2, _TORCHRUN_2), (1, {"MASTER_PORT": "29500"}), (1, {"WORLD_SIZE": "1"})],
)
def test_launches_that_start_what_was_asked_give_no_warning(world, env):
    assert launch_warning(world, env) is None


def test_ranks_that_never_joined_one_group_are_named():
    warning = launch_warning(1, {**_TORCHRUN_2, "WORLD_SIZE": "2"})
    assert warning is not None and "trains alone" in warning


def test_the_world_line_has_size_process_count_and_device(capsys):
    from ssrl_trl.launch_check import announce_world

    world = announce_world(_Accelerator(2, 0), _TORCHRUN_2)
    assert world == World(2, 0, 0, 2, "cpu", "MULTI_CPU", "gloo")
    assert capsys.readouterr().out.strip() == (
        "[ssrl-trl] world size 2 (MULTI_CPU, gloo): 2 processes, 2 on this machine; rank 0 on cpu"
    )
    announce_world(_Accelerator(2, 1), {**_TORCHRUN_2, "RANK": "1"})
    assert capsys.readouterr().out.strip() == "[ssrl-trl] rank 1 of 2 (local 1) on cpu"
    announce_world(_Accelerator(1, 0, "NO", None), _SIMPLE_2)
    captured = capsys.readouterr()
    assert "world size 1 (not distributed): 1 process, 1 on this machine" in captured.out
    assert "WARNING" in captured.err and "--multi_gpu" in captured.err
