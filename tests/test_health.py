"""Health guards on synthetic metric streams, the cost summary, and a real CPU run forced to NaN."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from conftest import write_tiny_recipe
from ssrl_trl.cost import CostCallback
from ssrl_trl.health import HealthState, HealthyCheckpoints, NaNGuard, _guards, build_health_callbacks


def healthy_stream(n: int = 30, seed: int = 0) -> list[dict[str, float]]:
    """What a run that learns looks like: reward and format rising with noise, entropy easing."""
    rng = random.Random(seed)
    logs = []
    for i in range(n):
        progress = i / n
        logs.append(
            {
                "loss": 0.01 * rng.uniform(-1, 1),
                "grad_norm": rng.uniform(0.2, 0.8),
                "learning_rate": 5e-6,
                "entropy": 1.9 - 0.6 * progress + rng.uniform(-0.05, 0.05),
                "kl": 0.002 + 0.02 * progress,
                "reward": 0.1 + 0.5 * progress + rng.uniform(-0.05, 0.05),
                "ssrl/format": min(1.0, 0.3 + 0.7 * progress + rng.uniform(-0.05, 0.05)),
                "frac_reward_zero_std": rng.uniform(0.1, 0.5),
                "rollout/truncated_fraction": rng.uniform(0.0, 0.2),
                "completions/clipped_ratio": rng.uniform(0.0, 0.2),
                "step_time": 10.0,
                "rollout/seconds": 6.0,
            }
        )
    return logs


def feed(callbacks, logs_stream, args=None):
    """Run callbacks' on_log over a stream as the trainer would; returns (state, control)."""
    args = args or SimpleNamespace(output_dir="unused")
    state, control = TrainerState(), TrainerControl()
    for logs in logs_stream:
        state.global_step += 1
        logs = dict(logs, step=state.global_step)
        state.log_history.append(dict(logs))
        for cb in callbacks:
            cb.on_log(args, state, control, logs=logs)
        if control.should_training_stop:
            break
    return state, control


def guard(name: str, **options):
    """The one guard ``name`` (all others off), as build_health_callbacks makes it."""
    names = [c for c in _all_names() if c != name]
    config = {n: False for n in names}
    config[name] = options or True
    (cb,) = build_health_callbacks(config)
    return cb


def _all_names():
    return [*_guards(), "cost"]


def with_tail(key: str, values: list[float], n_head: int = 10) -> list[dict[str, float]]:
    head = healthy_stream(n_head)
    return head + [dict(healthy_stream(1, seed=i)[0], **{key: v}) for i, v in enumerate(values)]


def test_every_guard_is_on_by_default_and_the_config_is_strict():
    callbacks = build_health_callbacks({})
    kinds = {type(c).__name__ for c in callbacks}
    assert {
        "CostCallback",
        "NaNGuard",
        "EntropyGuard",
        "DropGuard",
        "ThresholdGuard",
        "HealthyCheckpoints",
    } <= kinds
    names = {getattr(c, "name", None) for c in callbacks}
    assert {"entropy", "kl", "reward_drop", "format_drop", "zero_std", "truncation"} <= names
    with pytest.raises(ValueError, match=r"unknown health options \['entropi'\]; allowed: .*'entropy'"):
        build_health_callbacks({"entropi": True})
    with pytest.raises(
        ValueError, match=r"unknown options \['collapse'\] for health.entropy; allowed: .*collapse_ratio"
    ):
        build_health_callbacks({"entropy": {"collapse": 0.1}})
    with pytest.raises(ValueError, match="must be true, false or a mapping"):
        build_health_callbacks({"kl": 3})
    fewer = build_health_callbacks({"kl": False, "entropy": {"enabled": False}, "cost": False})
    assert len(fewer) == len(callbacks) - 3


def test_all_guards_stay_silent_on_a_healthy_run(capsys):
    callbacks = build_health_callbacks({})
    state, control = feed(callbacks, healthy_stream(40))
    assert not control.should_training_stop
    assert all(not getattr(c, "alarms", []) for c in callbacks)
    assert "ALARM" not in capsys.readouterr().out
    assert state.log_history[-1]["health/entropy"] == 0.0  # the 0/1 flags are logged


def test_no_false_alarms_on_a_long_noisy_but_stationary_run():
    rng = random.Random(1)
    stream = [
        {
            "entropy": rng.uniform(1.5, 2.0),
            "kl": rng.uniform(0.0, 0.05),
            "reward": rng.uniform(0.2, 0.6),
            "ssrl/format": rng.uniform(0.5, 1.0),
            "frac_reward_zero_std": rng.uniform(0.1, 0.5),
            "rollout/truncated_fraction": rng.uniform(0.0, 0.2),
        }
        for _ in range(3000)
    ]
    callbacks = build_health_callbacks({})
    feed(callbacks, stream)
    assert [a for c in callbacks for a in getattr(c, "alarms", [])] == []


@pytest.mark.parametrize(
    ("name", "stream"),
    [
        ("entropy", with_tail("entropy", [0.05, 0.04, 0.03])),  # collapse
        ("entropy", with_tail("entropy", [9.0, 9.5, 10.0])),  # explosion
        ("kl", with_tail("kl", [2.5, 3.0, 4.0])),
        ("reward_drop", with_tail("reward", [0.05] * 12, n_head=25)),
        ("format_drop", with_tail("ssrl/format", [0.0] * 12, n_head=25)),
        ("zero_std", with_tail("frac_reward_zero_std", [1.0] * 6)),
        ("truncation", with_tail("rollout/truncated_fraction", [0.9, 0.8, 0.95])),
    ],
)
def test_each_guard_fires_on_its_failure(name, stream, capsys):
    cb = guard(name)
    state, control = feed([cb], stream)
    assert cb.alarms, f"{name} stayed silent"
    assert f"ALARM {name}" in capsys.readouterr().out
    assert state.log_history[-1][f"health/{name}"] == 1.0
    assert not control.should_training_stop  # alarms only warn unless stop: true
    quiet = guard(name)
    feed([quiet], healthy_stream(40))
    assert not quiet.alarms


def test_truncation_falls_back_to_trls_clipped_ratio():
    stream = [{"completions/clipped_ratio": 0.9}] * 3
    cb = guard("truncation")
    feed([cb], stream)
    assert cb.alarms and "completions/clipped_ratio" in cb.alarms[0][1]


def test_stop_true_ends_the_run_with_a_checkpoint():
    cb = guard("kl", max=0.1, patience=1, stop=True)
    state, control = feed([cb], with_tail("kl", [0.5]))
    assert control.should_training_stop and control.should_save and state.global_step == 11


@pytest.mark.parametrize(
    ("key", "value"), [("loss", math.nan), ("grad_norm", math.inf), ("grad_norm", math.nan)]
)
def test_nan_guard_stops_on_non_finite_logs(key, value, capsys):
    stream = healthy_stream(5)
    stream[3][key] = value
    state, control = feed([guard("nan_guard")], stream)
    assert control.should_training_stop and control.should_save and state.global_step == 4
    assert f"STOPPING: {key} is {value} at step 4" in capsys.readouterr().out
    _, quiet = feed([guard("nan_guard")], healthy_stream(20))
    assert not quiet.should_training_stop


def test_nan_guard_drops_non_finite_gradients_before_the_optimizer_step():
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    cb, state, control = NaNGuard(), TrainerState(), TrainerControl()
    cb.on_pre_optimizer_step(None, state, control, model=model)
    assert not control.should_training_stop and model.weight.grad is not None
    model.bias.grad[0] = math.nan
    cb.on_pre_optimizer_step(None, state, control, model=model)
    assert control.should_training_stop and control.should_save
    assert all(p.grad is None for p in model.parameters())  # the optimizer will skip the update


def test_healthy_checkpoints_keep_the_last_k_saved_without_alarms(tmp_path):
    shared = HealthState()
    cb = HealthyCheckpoints(keep=2, state=shared)
    args, state, control = SimpleNamespace(output_dir=str(tmp_path)), TrainerState(), TrainerControl()
    for step in range(1, 6):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_text(f"weights {step}")
        state.global_step = step
        if step == 4:
            shared.active["entropy"] = "collapsed"  # an alarm is on at step 4's save
        if step == 5:
            shared.active.clear()
        cb.on_save(args, state, control)
    kept = sorted(p.name for p in (tmp_path / "healthy").iterdir())
    assert kept == ["checkpoint-3", "checkpoint-5"]
    assert (tmp_path / "healthy" / "checkpoint-3" / "model.safetensors").read_text() == "weights 3"
    (tmp_path / "checkpoint-3" / "model.safetensors").unlink()  # save_total_limit rotation
    assert (tmp_path / "healthy" / "checkpoint-3" / "model.safetensors").read_text() == "weights 3"
    assert shared.resume_hint().endswith(str(tmp_path / "healthy" / "checkpoint-5"))


def test_cost_callback_splits_step_time_and_writes_cost_json(tmp_path, capsys):
    args = SimpleNamespace(
        output_dir=str(tmp_path),
        world_size=1,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        per_device_train_batch_size=8,
    )
    cb, state, control = CostCallback(), TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control)
    for _ in range(3):
        state.global_step += 1
        state.num_input_tokens_seen += 1000
        logs = {
            "step_time": 10.0,
            "rollout/seconds": 6.0,
            "rollout/tokens_per_second": 50.0,
            "rollout/searches_per_trajectory": 1.5,
            "rollout/observation_tokens": 20.0,
            "rollout/retriever_errors": 1.0,
        }
        cb.on_log(args, state, control, logs=logs)
        assert logs["cost/rollout_share"] == pytest.approx(0.6)
        assert logs["cost/optimisation_share"] == pytest.approx(0.4)
        assert logs["cost/optimisation_seconds"] == pytest.approx(4.0)
    cb.on_train_end(args, state, control)
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost["steps"] == 3 and cost["tokens_generated"] == 900 and cost["searches"] == 36
    assert cost["tokens_trained"] == 3000 and cost["retriever_errors"] == 3 and cost["trajectories"] == 24
    assert cost["rollout_seconds"] == 18.0 and cost["optimisation_seconds"] == 12.0
    assert cost["machine"]["torch_threads"] >= 1 and "isa_flags" in cost["machine"]
    assert "=== ssrl-trl cost ===" in capsys.readouterr().out


@pytest.mark.slow
def test_a_cpu_run_with_a_nan_loss_stops_with_a_message_and_a_finite_checkpoint(
    tmp_path, tiny_model_dir, shared_data, monkeypatch, capsys
):
    """NaN enters the training forward (not generation): loss, then gradients, are NaN.

    In TRL 1.16 neither a NaN/inf reward (advantages go through nan_to_num) nor an absurd learning
    rate on an untrained model (all-zero rewards, zero advantages, zero gradients) gives a NaN
    loss, so a forward hook on the embeddings injects it while gradients are on.
    """
    from safetensors.torch import load_file

    import ssrl_trl.models as models
    from ssrl_trl.train import main

    load_model = models.load_model

    def poisoned(*args, **kwargs):
        model = load_model(*args, **kwargs)
        model.get_input_embeddings().register_forward_hook(
            lambda mod, inp, out: out * math.nan if torch.is_grad_enabled() else None
        )
        return model

    monkeypatch.setattr(models, "load_model", poisoned)
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, steps=3)
    assert main(["--config", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "[ssrl-trl health] STOPPING: non-finite gradients at step 1 (update skipped)" in out
    run = tmp_path / "run"
    state = json.loads((run / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and not (run / "checkpoint-2").exists()  # stopped early
    assert math.isnan(state["log_history"][0]["grad_norm"])
    weights = load_file(run / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())  # the poisoned update was skipped
    assert not (run / "healthy").exists()  # an unhealthy checkpoint is not kept as healthy
    assert json.loads((run / "cost.json").read_text())["steps"] == 1
