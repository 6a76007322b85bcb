"""Late failures moved before the model loads: each bad recipe exits 2 with one line naming the
file and the key, and the model loader is never called."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import write_tiny_recipe
from ssrl_trl.recipe import RecipeError, apply_overrides, load_recipe
from ssrl_trl.train import main


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything tries to load model weights."""
    import ssrl_trl.models as models

    def refuse(*_a, **_k):
        raise AssertionError("model weights were loaded before the recipe was checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)


def _recipe(tmp_path, tiny_model_dir, shared_data, edit):
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


CASES = {
    "temperature 0": (lambda d: d["grpo"].update(temperature=0), "grpo.temperature must be > 0"),
    "learning rate inf": (lambda d: d["grpo"].update(learning_rate=float("inf")), "grpo.learning_rate"),
    "negative completion length": (
        lambda d: d["grpo"].update(max_completion_length=-4),
        "grpo.max_completion_length",
    ),
    "one generation": (lambda d: d["grpo"].update(num_generations=1), "num_generations must be >= 2"),
    "wrong type": (lambda d: d["grpo"].update(logging_steps=[1]), "grpo.logging_steps"),
    "unquoted no": (lambda d: d["grpo"].update(save_strategy=False), "quote the string"),
    "unknown health guard": (lambda d: d.update(health={"entropi": True}), "health: unknown health options"),
    "bad guard option": (lambda d: d.update(health={"entropy": {"patiense": 3}}), "health: unknown options"),
    "bad checkpoint folder": (
        lambda d: d.update(health={"healthy_checkpoints": {"dirname": "/tmp"}}),
        "health",
    ),
    "infinite reward weight": (
        lambda d: d["rewards"][0].update(weight=float("nan")),
        "weight must be a finite",
    ),
    "reward kwargs on an instance": (
        lambda d: d["rewards"].append(
            {"path": "rewards.shaping.search_count", "kwargs": {"min_searches": 1}}
        ),
        "not a factory",
    ),
    "reward factory rejects kwargs": (
        lambda d: d["rewards"].append(
            {"path": "rewards.shaping.make_search_count", "kwargs": {"min_searches": 3, "max_searches": 1}}
        ),
        "min_searches (3) > max_searches (1)",
    ),
    "retriever option typo": (
        lambda d: d.update(
            environment={
                "kind": "retrieval",
                "retriever": {"kind": "http", "url": "http://127.0.0.1:9", "options": {"timout": 3}},
            }
        ),
        "unknown option(s) ['timout']",
    ),
    "retriever url scheme": (
        lambda d: d.update(
            environment={"kind": "retrieval", "retriever": {"kind": "http", "url": "ftp://x"}}
        ),
        "http:// or https://",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_late_failures_are_reported_before_any_weights_load(
    case, tmp_path, tiny_model_dir, shared_data, no_weights, capsys
):
    edit, expected = CASES[case]
    path = _recipe(tmp_path, tiny_model_dir, shared_data, edit)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err, err
    assert str(path) in err and "Traceback" not in err


def test_reward_module_that_raises_on_import(
    tmp_path, tiny_model_dir, shared_data, no_weights, capsys, monkeypatch
):
    (tmp_path / "broken_reward.py").write_text("raise RuntimeError('half-written reward module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _recipe(
        tmp_path, tiny_model_dir, shared_data, lambda d: d["rewards"].append({"path": "broken_reward.f"})
    )
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "RuntimeError: half-written reward module" in err and "Traceback" not in err


def test_duplicate_yaml_keys_and_non_utf8_files(tmp_path, no_weights):
    dup = tmp_path / "dup.yaml"
    dup.write_text("method: ssrl\ngrpo:\n  learning_rate: 1e-6\n  learning_rate: 1e-3\n")
    with pytest.raises(RecipeError, match="duplicate key 'learning_rate'"):
        load_recipe(dup)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("method: ssrl  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(bad)


def test_output_dir_must_be_writable(tmp_path, tiny_model_dir, shared_data, no_weights):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    path = _recipe(
        tmp_path, tiny_model_dir, shared_data, lambda d: d["grpo"].update(output_dir=str(blocker / "run"))
    )
    with pytest.raises(RecipeError, match="grpo.output_dir .* is not a writable folder"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], "no rows"),
        ([{"id": "1", "golden_answers": ["x"]}], "no 'question' field"),
        ([{"id": "1", "question": "q"}], "no 'golden_answers'"),
        (
            [{"id": "1", "question": "q", "golden_answers": ["the", "  .  "]}],
            "no answer left after normalisation",
        ),
    ],
)
def test_data_files_are_checked_before_weights_load(
    rows, expected, tmp_path, tiny_model_dir, shared_data, no_weights
):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _recipe(
        tmp_path, tiny_model_dir, shared_data, lambda d: d["data"].update(train=[{"path": str(data)}])
    )
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


def test_set_keeps_strings_for_string_fields():
    data = apply_overrides({}, ["grpo.save_strategy=no", "grpo.bf16=no", "grpo.report_to=none"])
    assert data["grpo"] == {"save_strategy": "no", "bf16": False, "report_to": "none"}
