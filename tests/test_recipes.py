"""Every shipped recipe validates; invalid recipes fail fast with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssrl_trl.recipe import RecipeError, apply_overrides, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


#: Recipes whose data a make target generates first (make learn-check, make train-search-r1).
GENERATED_DATA = {
    "learn_check.yaml": "runs/learn_check/data/",
    "search_r1_smollm2.yaml": "runs/data/",
    "autorefine_smollm2.yaml": "runs/data/",  # the Search-R1 recipe's reachable questions
}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_validates_and_builds_its_grpo_config(path, monkeypatch):
    monkeypatch.chdir(REPO)
    from ssrl_trl.train import _grpo_config

    generated = GENERATED_DATA.get(path.name)
    recipe = load_recipe(path, check_files=generated is None)
    if generated is not None:
        assert all(s.path.startswith(generated) for s in recipe.data.train + recipe.data.eval)
    config = _grpo_config(recipe, [r.weight for r in recipe.rewards])
    assert config.remove_unused_columns is False
    assert config.num_generations >= 4


def test_paper_recipes_keep_the_paper_hyper_parameters(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("ssrl", "search_r1", "r1_searcher_stage1", "r1_searcher_stage2"):
        grpo = load_recipe(REPO / "recipes" / f"{name}.yaml").grpo
        assert grpo["beta"] == 0.001
        assert grpo["learning_rate"] in (1e-6, 2e-6)
        if name in ("ssrl", "search_r1"):
            assert grpo["num_generations"] == 5 and grpo["learning_rate"] == 1e-6


@pytest.mark.parametrize("name", ["single", "ddp", "zero2", "zero3"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "recipes" / "accelerate" / f"{name}.yaml"))
    assert cfg.num_processes >= 1


def _base(tmp_path) -> dict:
    data = REPO.parent / "shared" / "data" / "qa" / "mini_eval.jsonl"
    return {
        "method": "ssrl",
        "model": {"name_or_path": "some/model"},
        "data": {"train": str(data)},
        "environment": {"kind": "self_search"},
        "rewards": [{"path": "rewards.ssrl.reward"}],
        "grpo": {"output_dir": str(tmp_path / "out")},
    }


def _write(tmp_path, data) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_minimal_recipe_is_valid(tmp_path):
    assert load_recipe(_write(tmp_path, _base(tmp_path))).method == "ssrl"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(modle={}), "unknown key 'modle'"),
        (lambda r: r["model"].update(dtype="float8"), "model.dtype"),
        (lambda r: r.update(method="ppo"), "method"),
        (
            lambda r: (
                r["budgets"].update(max_turns=0) if "budgets" in r else r.update(budgets={"max_turns": 0})
            ),
            "budgets.max_turns",
        ),
        (
            lambda r: (
                r["budgets"].update(max_turns="many")
                if "budgets" in r
                else r.update(budgets={"max_turns": "many"})
            ),
            "budgets.max_turns",
        ),
        (lambda r: r["grpo"].update(learning_rat=1e-6), "did you mean 'learning_rate'"),
        (lambda r: r.update(rewards=[{"path": "rewards.ssrl.nope"}]), "has no attribute 'nope'"),
        (lambda r: r.update(rewards=[{"path": "no_such_module.reward"}]), "cannot be imported"),
        (lambda r: r.update(rewards=[]), "at least one reward"),
        (lambda r: r["data"].update(train="missing.jsonl"), "data file 'missing.jsonl' not found"),
        (lambda r: r["data"].update(prompt_template="nope"), "prompt_template 'nope'"),
        (lambda r: r.update(environment={"kind": "retrieval"}), "needs a retriever"),
        (
            lambda r: r.update(
                environment={"kind": "retrieval", "retriever": {"kind": "bm25", "index": "/no/index"}}
            ),
            "not found and no corpus",
        ),
        (lambda r: r.update(environment={"kind": "retrieval", "retriever": {"kind": "http"}}), "needs url"),
        (lambda r: r.update(environment={"kind": "self_search", "topk": 0}), "environment.topk"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_recipes_name_the_problem(tmp_path, mutate, message):
    data = _base(tmp_path)
    mutate(data)
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, data))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("!!python/object:os.system ls", "not valid YAML"),
    ],
)
def test_unsafe_or_broken_yaml_is_rejected(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values_and_scientific_notation():
    data = apply_overrides({"grpo": {}}, ["grpo.learning_rate=1e-6", "grpo.bf16=true", "budgets.max_turns=3"])
    assert data == {"grpo": {"learning_rate": 1e-6, "bf16": True}, "budgets": {"max_turns": 3}}
    with pytest.raises(RecipeError, match="key=value"):
        apply_overrides({}, ["grpo.learning_rate"])
