"""A 2-step CPU training run from a recipe file, and resuming it from its checkpoint."""

from __future__ import annotations

import json
import os

import pytest

from conftest import write_tiny_recipe
from ssrl_trl.train import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["ssrl", "search_r1"])
def test_two_step_run_from_a_recipe_writes_checkpoint_log_and_summary(
    tmp_path, tiny_model_dir, shared_data, method
):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method=method)
    assert main(["--config", str(recipe)]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoint-2").is_dir() and (run / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    outcome = "ssrl" if method == "ssrl" else "search_r1_em"
    assert len(records) == 8 and all(set(r["rewards"]) == {outcome, "tag_presence"} for r in records)
    assert (run / "training_curve.png").stat().st_size > 1000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward_start"] is not None
    history = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert "rollout/masked_fraction" in history[0] and "rollout/turns" in history[0]
    if method == "search_r1":
        assert (tmp_path / "bm25").is_dir()  # built from the corpus on first use


def test_resume_continues_the_step_count(tmp_path, tiny_model_dir, shared_data):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, steps=1)
    assert main(["--config", str(recipe)]) == 0
    assert (tmp_path / "run" / "checkpoint-1").is_dir()
    assert main(["--config", str(recipe), "--set", "grpo.max_steps=2", "--resume", "auto"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2]  # step 1 from the first run, step 2 from the resumed one


def test_bad_recipe_exits_with_a_message_not_a_traceback(tmp_path, tiny_model_dir, shared_data, capsys):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, grpo={"learning_rat": 1e-6})
    assert main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "grpo.learning_rat is not a GRPOConfig field" in err and "learning_rate" in err


def test_a_run_evaluates_its_held_out_set_before_and_after(tmp_path, tiny_model_dir, shared_data, capsys):
    """data.eval is evaluated greedily with the run's environment before and after training (and
    every N steps); before_after.json pairs the two by question with bootstrap intervals."""
    import yaml

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method="search_r1")
    data = yaml.safe_load(recipe.read_text())
    data["data"]["train"][0]["limit"] = 8
    data["data"]["eval"] = [{"path": str(shared_data / "qa" / "bamboogle_test.jsonl"), "limit": 5}]
    data["evaluation"] = {"limit": 4, "every_steps": 1, "batch_size": 3, "resamples": 200}
    recipe.write_text(yaml.safe_dump(data))
    assert main(["--config", str(recipe)]) == 0
    run = tmp_path / "run"
    result = json.loads((run / "before_after.json").read_text())
    assert result["n"] == 4 and result["steps"] == 2
    for metric in ("em", "cover_em", "f1", "format_valid", "answered", "searches"):
        assert metric in result["before"] and metric in result["after"]
        lo, hi = result["diff"][metric]["ci95"]
        assert lo <= result["diff"][metric]["mean"] <= hi
    assert (run / "before_after.png").stat().st_size > 1000
    for name in ("before", "after", "step-1"):
        assert len((run / "heldout" / name / "predictions_heldout.jsonl").read_text().splitlines()) == 4
    curve = [json.loads(line) for line in (run / "heldout_curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [1] and "heldout/em" in curve[0]
    history = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert any("heldout/em" in h for h in history)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["heldout"]["n"] == 4
    # the host is recorded with the figures: a seed fixes a CPU run only on one kind of CPU
    assert summary["machine"]["logical_cpus"] == os.cpu_count() and result["machine"] == summary["machine"]
    printed = capsys.readouterr().out
    assert printed.index("held-out EM") < printed.index("steps:")  # the held-out line comes first
