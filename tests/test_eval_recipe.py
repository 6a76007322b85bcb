"""``ssrl-trl eval --recipe``: the recipe's model, tag set, environment, prompt, system prompt,
response prefix and budgets, through the training assembly, give the same trajectories as the
equivalent flag form; explicit flags override the recipe."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import write_tiny_recipe
from ssrl_trl.cli import main as cli_main
from ssrl_trl.evaluation.cli import main as eval_main

pytestmark = pytest.mark.slow

PROMPT = (
    "Answer the question. Think in {think_open} {think_close}, search with {search_open} query "
    "{search_close}, read {info_open} {info_close}, answer in {answer_open} {answer_close}.\n"
    "Question: {question}"
)


def _recipe(tmp_path, tiny_model_dir, shared_data, method: str):
    """A tiny recipe in the shape of recipes/cpu/search_r1_smollm2.yaml (or the SSRL one)."""
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method=method)
    data = yaml.safe_load(path.read_text())
    template = tmp_path / "prompt.txt"
    template.write_text(PROMPT)
    data["data"]["eval"] = [{"path": str(shared_data / "qa" / "bamboogle_test.jsonl"), "name": "heldout"}]
    data["data"]["prompt_template"] = str(template)
    data["data"]["system_prompt"] = "You are a helpful assistant."
    data["environment"]["response_prefix"] = "<think>"
    if method == "ssrl":
        data["budgets"] = {"max_turns": 1, "max_tokens_per_turn": 24}
        data["grpo"]["max_completion_length"] = 24
    else:
        data["budgets"] = {
            "max_turns": 2,
            "max_tokens_per_turn": 12,
            "max_obs_tokens": 40,
            "answer_reserve_tokens": 8,
        }
        data["grpo"]["max_completion_length"] = 48
    path.write_text(yaml.safe_dump(data))
    return path, template


def _records(folder, arm: str) -> list[dict]:
    lines = (folder / f"predictions_{arm}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


RUN = ["--backend", "hf", "--limit", "3", "--batch-size", "4", "--no-progress"]


@pytest.mark.parametrize("method", ["search_r1", "ssrl"])
def test_eval_recipe_gives_the_trajectories_of_the_equivalent_flags(
    tmp_path, tiny_model_dir, shared_data, method
):
    recipe, template = _recipe(tmp_path, tiny_model_dir, shared_data, method)
    by_recipe, by_flags = tmp_path / "recipe", tmp_path / "flags"
    assert eval_main(["--recipe", str(recipe), *RUN, "--out", str(by_recipe)]) == 0
    flags = ["--model", str(tiny_model_dir), "--dtype", "float32", "--tags", method,
             "--prompt-template", str(template), "--system", "You are a helpful assistant.",
             "--response-prefix", "<think>",
             "--datasets", f"heldout={shared_data / 'qa' / 'bamboogle_test.jsonl'}"]  # fmt: skip
    if method == "ssrl":
        flags += ["--mode", "self", "--max-new-tokens", "24"]
    else:
        flags += ["--mode", "retrieval", "--retriever", f"bm25:{tmp_path / 'bm25'}", "--topk", "2",
                  "--max-new-tokens", "48", "--max-turns", "2", "--max-tokens-per-turn", "12",
                  "--max-obs-tokens", "40", "--answer-reserve-tokens", "8"]  # fmt: skip
    assert eval_main([*flags, *RUN, "--out", str(by_flags)]) == 0
    arm = "self" if method == "ssrl" else "real"
    a, b = _records(by_recipe, arm), _records(by_flags, arm)
    assert len(a) == 3 and a == b  # completions, answers, queries, documents, scores, signals
    assert all(r["completion"].startswith("<think>") for r in a)  # the recipe's response prefix
    settings = [json.loads((f / f"{arm}.settings.json").read_text()) for f in (by_recipe, by_flags)]
    for key in ("budgets", "tags", "template_sha1", "system", "response_prefix", "format_check", "sampling"):
        assert settings[0][key] == settings[1][key], key


def test_flags_override_the_recipe(tmp_path, tiny_model_dir, shared_data, capsys):
    recipe, _ = _recipe(tmp_path, tiny_model_dir, shared_data, "search_r1")
    out = tmp_path / "override"
    argv = ["--recipe", str(recipe), "--max-turns", "1", "--topk", "1", *RUN, "--out", str(out)]
    assert eval_main(argv) == 0
    settings = json.loads((out / "real.settings.json").read_text())
    assert settings["budgets"]["max_turns"] == 1 and settings["options"]["topk"] == 1
    assert all(r["searches"] == 0 for r in _records(out, "real"))  # one turn: no reply can follow
    # An override is validated like the recipe's own value; a mode the recipe does not run is refused.
    assert cli_main(["eval", "--recipe", str(recipe), "--topk", "0", *RUN, "--out", str(out)]) == 2
    assert "environment.topk" in capsys.readouterr().err
    assert cli_main(["eval", "--recipe", str(recipe), "--mode", "self", *RUN, "--out", str(out)]) == 2
    assert "evaluates its own 'retrieval' environment" in capsys.readouterr().err
