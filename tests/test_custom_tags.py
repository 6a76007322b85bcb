"""A recipe's own tag set (renamed tags) works end to end: the prompt names its tags, the
environment stops at them and inserts documents inside them, the rewards score them (they get the
recipe's tags, not their defaults), and two GRPO steps train on it."""

from __future__ import annotations

import json

import pytest
import rewards.search_r1
import yaml

from conftest import write_tiny_recipe
from ssrl_trl.recipe import load_recipe
from ssrl_trl.rollout import ScriptedBackend
from ssrl_trl.train import build_trainer, run_training

pytestmark = pytest.mark.slow

RENAMED = {
    "name": "renamed",
    "search": ["<lookup>", "</lookup>"],
    "information": ["<found>", "</found>"],
    "answer": ["<final>", "</final>"],
    "think": ["<plan>", "</plan>"],
}
DOCS = ['"Rome"\nRome is the capital of Italy.', '"Paris"\nParis is the capital of France.']
QUESTIONS = [("Italy", "Rome"), ("France", "Paris"), ("Italy", "Rome"), ("France", "Paris")]


def _policy(tokenizer):
    """Searches with the renamed tags, then answers from the document it was shown."""

    def script(ids, _call):
        context = tokenizer.decode(ids).split("<|im_start|>assistant")[-1]
        if "</found>" not in context:
            country = "Italy" if "capital of Italy" in tokenizer.decode(ids) else "France"
            return f"<plan>look it up</plan><lookup>capital of {country}</lookup>"
        city = "Rome" if "Rome is the capital" in context else "Paris"
        return f"<plan>so</plan><final>{city}</final>"

    return script


def test_renamed_tags_train_two_steps_and_score_correctly(tmp_path, tiny_model_dir, shared_data, tokenizer):
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": str(i), "question": f"What is the capital of {c}?", "golden_answers": [a]}
        for i, (c, a) in enumerate(QUESTIONS)
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method="search_r1", tags=RENAMED)
    data = yaml.safe_load(path.read_text())
    data["data"]["train"] = [{"path": str(qa)}]
    data["environment"] = {
        "kind": "retrieval",
        "topk": 1,
        "retriever": {"kind": "memory", "options": {"docs": DOCS}},
    }
    data["budgets"] = {"max_turns": 3, "max_tokens_per_turn": 32, "max_obs_tokens": 48}
    data["rewards"] = [{"path": "rewards.search_r1.em"}, {"path": "rewards.search_r1.format"},
                       {"path": "rewards.shaping.tag_presence"}]  # fmt: skip
    data["grpo"].update(max_completion_length=160, save_strategy="no")
    path.write_text(yaml.safe_dump(data))

    recipe = load_recipe(path)
    run = build_trainer(recipe)
    run.rollout.backend = ScriptedBackend(tokenizer, _policy(tokenizer))
    assert run_training(run, recipe) == 0

    records = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8  # 2 steps x 4 samples
    for rec in records:
        assert "<lookup>" in rec["prompt"] and "<final>" in rec["prompt"]  # the template names the tags
        assert rec["rewards"] == {"search_r1_em": 1.0, "format": 1.0, "tag_presence": 1.0}
        assert rec["num_searches"] == 1 and rec["stop_reason"] == "answer"
        documents = [s["text"] for s in rec["segments"] if s["kind"] == "observation"]
        assert len(documents) == 1 and documents[0].startswith('\n\n<found>Doc 1(Title: "')
        assert documents[0].endswith("</found>\n\n") and rec["answer"] in documents[0]
    # The same completion scored against the default tags is not in the format: the reward above
    # was bound to the recipe's tag set.
    text = "".join(s["text"] for s in records[0]["segments"] if s["kind"] != "eos")
    assert rewards.search_r1.format(completions=[text]) == [0.0]
    assert rewards.search_r1.format.with_tags(load_recipe(path).tag_set())(completions=[text]) == [1.0]
