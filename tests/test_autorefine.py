"""AutoRefine ("search and refine during think"): the grammar with a refine note after every
information block, the outcome + refine reward, the prompt, and two GRPO steps plus an evaluation
through a recipe, with the loss mask checked token by token (documents 0, refine notes 1)."""

from __future__ import annotations

import doctest
import json

import pytest
import yaml

from conftest import write_tiny_recipe
from ssrl_trl import refine_format, refine_reward
from ssrl_trl.formats import AUTOREFINE_FORMAT, FORMAT_CHECKS, search_r1_format_valid
from ssrl_trl.prompts import TEMPLATES, render_prompt
from ssrl_trl.protocol import AUTOREFINE, SEARCH_R1, get_tag_set
from ssrl_trl.recipe import load_recipe
from ssrl_trl.refine_format import autorefine_format_valid, refine_blocks
from ssrl_trl.refine_reward import AutoRefineReward, refine_hit
from ssrl_trl.rewards import FormatReward, TagPresenceReward

RENAMED = {
    "name": "renamed",
    "search": ["<lookup>", "</lookup>"],
    "information": ["<found>", "</found>"],
    "answer": ["<final>", "</final>"],
    "think": ["<plan>", "</plan>"],
    "refine": ["<distil>", "</distil>"],
}
DOC = '<information>Doc 1(Title: "Paris") Paris is the capital of France.</information>'
ONE = f"<think>t</think><search>capital of France</search>{DOC}<refine>Paris is the capital.</refine>"


def _c(*parts: str) -> str:
    return "".join(parts)


# -- the grammar ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        _c(ONE, "<answer>Paris</answer>"),
        _c(ONE, "<think>so</think><answer>Paris</answer>"),
        _c(ONE, "<search>more</search>", DOC, "<refine>still Paris</refine><answer>Paris</answer>"),
        _c(ONE, "<think>again</think><search>q2</search>", DOC, "<refine>x</refine><answer>a</answer>"),
        "<think>I know this</think><answer>Paris</answer>",  # answering without a search is allowed
        _c("  \n", ONE, "\n<answer>Paris</answer>\n "),  # whitespace between and around blocks
    ],
    ids=["one_search", "think_after_refine", "two_searches", "think_search_again", "no_search", "spaces"],
)
def test_autorefine_grammar_accepts(text):
    assert autorefine_format_valid(text, AUTOREFINE)
    assert AUTOREFINE.format_valid(text) and AUTOREFINE.format_score(text) == 1.0


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"<think>t</think><search>q</search>{DOC}<answer>Paris</answer>", "no refine after documents"),
        (f"<think>t</think><search>q</search>{DOC}<think>t</think><answer>a</answer>", "think, no refine"),
        (_c(ONE, "<search>q2</search>", DOC, "<answer>a</answer>"), "second documents not refined"),
        (f"<think>t</think><search>q</search>{DOC}<refine>  </refine><answer>a</answer>", "empty note"),
        ("<think>t</think><refine>a guess</refine><answer>a</answer>", "note without documents"),
        (f"<think>t</think><search>q</search><refine>x</refine>{DOC}<answer>a</answer>", "note first"),
        (_c(ONE, "<answer>Paris</answer> and more"), "text after the answer"),
        (_c(ONE), "no answer"),
        (f"<think>t</think><search>q</search>{DOC}<refine>a <answer>b</answer></refine>", "nested"),
        (f"<think>t</think><search>q</search>{DOC}<refine>unclosed<answer>a</answer>", "unclosed note"),
        (_c(ONE, "<answer>Paris</answer><answer>Rome</answer>"), "two answers"),
        (_c("<search>q</search>", DOC, "<refine>x</refine><answer>a</answer>"), "no opening think"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v and "<" not in v else None,
)
def test_autorefine_grammar_rejects(text, why):
    assert not autorefine_format_valid(text, AUTOREFINE), why
    assert AUTOREFINE.format_score(text) == 0.0


def test_grammar_reads_the_tag_set_and_is_registered():
    renamed = get_tag_set(RENAMED, base="autorefine")
    assert renamed.format_check is AUTOREFINE_FORMAT and FORMAT_CHECKS["autorefine"] is AUTOREFINE_FORMAT
    text = (
        "<plan>p</plan><lookup>capital of France</lookup><found>Paris is the capital.</found>"
        "<distil>Paris</distil><final>Paris</final>"
    )
    assert renamed.format_valid(text) and not AUTOREFINE.format_valid(text)
    # A tag set without a refine pair has no refine grammar; Search-R1's grammar has no refine step.
    assert not autorefine_format_valid(_c(ONE, "<answer>Paris</answer>"), SEARCH_R1)
    assert not search_r1_format_valid(_c(ONE, "<answer>Paris</answer>"), AUTOREFINE)


def test_tag_set_refine_pair_from_a_recipe_mapping():
    assert AUTOREFINE.refine == ("<refine>", "</refine>") and SEARCH_R1.refine is None
    assert list(AUTOREFINE.pairs()) == ["search", "information", "answer", "think", "refine"]
    inherited = get_tag_set({k: v for k, v in RENAMED.items() if k != "refine"}, base="autorefine")
    assert inherited.refine == ("<refine>", "</refine>")  # the method's pair, like its format check
    assert get_tag_set({**RENAMED, "refine": None}, base="autorefine").refine is None
    assert get_tag_set({k: v for k, v in RENAMED.items() if k != "refine"}, base="search_r1").refine is None
    with pytest.raises(ValueError, match="distinct"):
        get_tag_set({**RENAMED, "refine": ["<plan>", "</distil>"]})
    with pytest.raises(ValueError, match="refine open and close"):
        get_tag_set({**RENAMED, "refine": ["<r>", "<r>"]})


def test_refine_blocks_are_the_models_notes_after_documents():
    text = _c(
        "<think>t</think><refine>guess Rome</refine><search>q</search>",
        "<information>Doc 1 <refine>inserted Lyon</refine></information>",
        "<refine> first note </refine><think>t</think><search>q2</search>",
        "<information>d2</information><refine>second</refine><answer>a</answer>",
    )
    assert refine_blocks(text, AUTOREFINE) == ["first note", "second"]
    assert refine_blocks(text, SEARCH_R1) == []  # no refine pair, no notes
    assert refine_blocks("<refine>x</refine>", AUTOREFINE) == []  # nothing read yet


# -- the reward -----------------------------------------------------------------------------------
RIGHT = _c(ONE, "<answer>Paris</answer>")
WRONG_REFINED = _c(ONE, "<answer>Lyon</answer>")  # the note holds "Paris", the answer is wrong
WRONG_UNREFINED = _c(
    f"<think>t</think><search>capital of France</search>{DOC}<refine>a city</refine><answer>Lyon</answer>"
)


def test_reward_outcome_then_refine_credit():
    reward = AutoRefineReward()
    golden = [["Paris"]] * 4
    texts = [RIGHT, WRONG_REFINED, WRONG_UNREFINED, ONE]  # the last never answers
    assert reward(completions=texts, golden_answers=golden) == [1.0, 0.1, 0.0, 0.0]
    # Gold only inside the inserted documents earns nothing: the note must carry it.
    assert refine_hit(WRONG_UNREFINED, ["Paris"]) == 0.0 and refine_hit(WRONG_REFINED, ["Paris"]) == 1.0


def test_reward_scores_the_engines_answer_and_normalises_like_evaluation():
    reward = AutoRefineReward()
    # The rollout's final_answer wins over the text (an answer inside inserted text never counts).
    assert reward(completions=[WRONG_REFINED], golden_answers=[["Paris"]], final_answer=["paris!"]) == [1.0]
    assert reward(completions=[RIGHT], golden_answers=[["Paris"]], final_answer=[None]) == [0.0]
    note = (
        f"<think>t</think><search>q</search>{DOC}<refine>It is THE Eiffel Tower!</refine><answer>x</answer>"
    )
    assert reward(completions=[note], golden_answers=[["the eiffel tower"]]) == [0.1]
    assert reward(completions=[note], golden_answers=[["Eiffel"]]) == [0.1]  # cover-EM: a substring
    assert reward(completions=[note], golden_answers=[["Louvre"]]) == [0.0]


def test_reward_combinations_and_parameters():
    golden = [["Paris"]] * 3
    texts = [RIGHT, WRONG_REFINED, WRONG_UNREFINED]
    assert AutoRefineReward(combine="sum")(completions=texts, golden_answers=golden) == [1.1, 0.1, 0.0]
    both = AutoRefineReward(refine_weight=0.2, format_weight=0.05)
    assert both(completions=texts, golden_answers=golden) == pytest.approx([1.0, 0.25, 0.05])
    partial = _c(ONE, "<answer>Paris France</answer>")
    assert AutoRefineReward(outcome="f1")(completions=[partial], golden_answers=[["Paris"]]) == [
        pytest.approx(2 / 3)
    ]
    assert AutoRefineReward()(completions=[partial], golden_answers=[["Paris"]]) == [0.1]
    for bad in ({"outcome": "bleu"}, {"combine": "max"}, {"refine_weight": float("nan")}):
        with pytest.raises(ValueError):
            AutoRefineReward(**bad)


def test_reward_with_renamed_tags_and_refusing_tags_without_refine():
    renamed = get_tag_set(RENAMED, base="autorefine")
    text = (
        "<plan>p</plan><lookup>capital of France</lookup><found>Paris is the capital.</found>"
        "<distil>It is Paris.</distil><final>Lyon</final>"
    )
    assert AutoRefineReward()(completions=[text], golden_answers=[["Paris"]]) == [0.0]  # default tags
    assert AutoRefineReward().with_tags(renamed)(completions=[text], golden_answers=[["Paris"]]) == [0.1]
    assert AutoRefineReward(tags=RENAMED)(completions=[text], golden_answers=[["paris"]]) == [0.1]
    with pytest.raises(ValueError, match="refine pair"):
        AutoRefineReward().with_tags("search_r1")
    with pytest.raises(ValueError, match="refine pair"):
        AutoRefineReward(tags={**RENAMED, "refine": None})


def test_reward_logs_its_terms():
    logged: dict[str, float] = {}
    AutoRefineReward()(
        completions=[RIGHT, WRONG_REFINED, WRONG_UNREFINED, "nothing"],
        golden_answers=[["Paris"]] * 4,
        num_searches=[1, 1, 1, 0],
        log_metric=logged.__setitem__,
    )
    assert logged == {
        "autorefine/em": 0.25,
        "autorefine/refine": 0.5,
        "autorefine/refines": 0.75,
        "autorefine/format": 0.75,
        "autorefine/searches": 0.75,
    }


def test_shaping_rewards_count_the_refine_block():
    half = f"<think>t</think><search>q</search>{DOC}<answer>a</answer>"
    assert TagPresenceReward(tags="autorefine")(completions=[RIGHT, half]) == [1.0, 0.8]
    assert FormatReward(tags="autorefine")(completions=[RIGHT, half]) == [1.0, 0.0]


def test_grammar_and_reward_never_raise_on_tag_soup():
    """Seeded tag soup (every tag of the tag set, fragments, nesting, unclosed blocks): the format
    score is 0 or 1, notes are stripped strings, the reward is one of its documented values."""
    import random

    rng = random.Random(7)
    pieces = [t for pair in AUTOREFINE.pairs().values() for t in pair]
    pieces += ["<", ">", "</", "Paris", " ", "\n", "the", "<refine", "refine>", "Doc 1", "ü"]
    reward = AutoRefineReward(format_weight=0.05)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    texts += [RIGHT * 50, "<refine>" * 1000, "</information><refine>Paris</refine>"]
    values = reward(completions=texts, golden_answers=[["Paris"]] * len(texts))
    assert set(values) <= {0.0, 0.05, 0.1, 0.1 + 0.05, 1.0}
    for text in texts:
        assert AUTOREFINE.format_score(text) in (0.0, 1.0)
        notes = refine_blocks(text, AUTOREFINE)
        assert all(n == n.strip() and "</refine>" not in n for n in notes)


def test_doctests():
    for module in (refine_format, refine_reward):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# -- prompt and recipes ---------------------------------------------------------------------------
def test_prompt_names_the_refine_tags():
    prompt = render_prompt(TEMPLATES["autorefine"], "Who?", get_tag_set(RENAMED, base="autorefine"))
    assert "<distil> and </distil>" in prompt and "<found> and </found>" in prompt
    assert "<refine>" not in prompt and prompt.endswith("Question: Who?")
    # A tag set without a refine step renders the fields empty rather than failing.
    assert render_prompt("{refine_open}{refine_close}{question}", "q", SEARCH_R1) == "q"


def test_shipped_recipes_use_the_autorefine_grammar(monkeypatch):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    for name in ("cpu/autorefine_smollm2.yaml", "autorefine.yaml"):
        recipe = load_recipe(repo / "recipes" / name, check_files=False)
        assert recipe.tag_set() is AUTOREFINE and recipe.environment.kind == "retrieval"
        from ssrl_trl.assembly import assemble

        parts = assemble(recipe)
        prompt = render_prompt(parts.template, "Who?", parts.tags)
        assert "<refine>" in prompt and "{" not in prompt
        funcs, _ = parts.rewards()
        assert isinstance(funcs[0], AutoRefineReward) and funcs[0].tags is AUTOREFINE


def test_recipe_without_a_refine_pair_is_refused_before_loading(tmp_path, tiny_model_dir, shared_data):
    path = write_tiny_recipe(
        tmp_path, tiny_model_dir, shared_data, method="autorefine", tags={**RENAMED, "refine": None}
    )
    data = yaml.safe_load(path.read_text())
    data["rewards"] = [{"path": "rewards.autorefine.reward"}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="refine pair"):
        load_recipe(path)


def test_refine_reward_in_a_recipe_without_refine_tags_is_one_error_naming_the_reward(
    tmp_path, tiny_model_dir, shared_data
):
    from ssrl_trl.recipe import RecipeError

    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method="search_r1")
    data = yaml.safe_load(path.read_text())
    data["rewards"] = [{"path": "rewards.autorefine.reward"}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"rewards\[0\] \(rewards.autorefine.reward\) cannot score tag set"):
        load_recipe(path)


# -- end to end: two GRPO steps and an evaluation, with a scripted policy -------------------------
DOCS = ['"Rome"\nRome is the capital of Italy.', '"Paris"\nParis is the capital of France.']
QUESTIONS = [("Italy", "Rome"), ("France", "Paris")]  # both in every step (2 prompts x 4 samples)
NOTE = {"Italy": "Rome is the capital of Italy.", "France": "Paris is the capital of France."}
ANSWER = {"Italy": "Rome", "France": "Lyon"}  # wrong for France: only the refine note earns credit


def _policy(tokenizer):
    """Searches, refines the document it was shown, answers (wrongly for France)."""

    def script(ids, _call):
        text = tokenizer.decode(ids)
        country = "Italy" if "capital of Italy?" in text else "France"
        if "</information>" not in text.split("<|im_start|>assistant")[-1]:
            return f"<think>look it up</think><search>capital of {country}</search>"
        return f"<refine>{NOTE[country]}</refine><answer>{ANSWER[country]}</answer>"

    return script


def _tiny_autorefine_recipe(tmp_path, tiny_model_dir, shared_data, *, evaluate: bool = False):
    """The tiny recipe on the capital questions: trained on them, or (``evaluate``) evaluated."""
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": str(i), "question": f"What is the capital of {c}?", "golden_answers": [a]}
        for i, (c, a) in enumerate(QUESTIONS)
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method="autorefine")
    data = yaml.safe_load(path.read_text())
    if evaluate:
        data["data"]["eval"] = [{"path": str(qa), "name": "capitals"}]
    else:
        data["data"]["train"] = [{"path": str(qa)}]
    data["environment"] = {
        "kind": "retrieval",
        "topk": 1,
        "retriever": {"kind": "memory", "options": {"docs": DOCS}},
    }
    data["budgets"] = {"max_turns": 3, "max_tokens_per_turn": 40, "max_obs_tokens": 48}
    data["rewards"] = [{"path": "rewards.autorefine.reward"}, {"path": "rewards.autorefine.format"},
                       {"path": "rewards.shaping.tag_presence"}]  # fmt: skip
    data["grpo"].update(max_completion_length=192, save_strategy="no", per_device_train_batch_size=8)
    path.write_text(yaml.safe_dump(data))
    return path


def _check_mask(rec: dict, tokenizer) -> None:
    """env_mask is 1 on exactly the model's tokens (refine note included), 0 on the documents."""
    ids, mask, segs = rec["completion_ids"], rec["env_mask"], rec["segments"]
    assert [s["kind"] for s in segs][:3] == ["model", "observation", "model"]
    assert {s["kind"] for s in segs[3:]} <= {"eos"}
    expected = [int(s["kind"] == "model") for s in segs for _ in range(s["start"], s["end"])]
    assert mask == expected and len(ids) == len(mask)
    kept = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    dropped = tokenizer.decode(
        [t for s in segs if s["kind"] == "observation" for t in ids[s["start"] : s["end"]]]
    )
    note = segs[2]["text"]
    assert note.startswith("<refine>") and "</refine><answer>" in note
    assert note in kept and "Doc 1(Title:" not in kept  # the refine note trains, documents do not
    assert dropped == segs[1]["text"] and dropped.startswith('\n\n<information>Doc 1(Title: "')


@pytest.mark.slow
def test_autorefine_trains_two_steps_with_exact_masks_and_refine_credit(
    tmp_path, tiny_model_dir, shared_data, tokenizer
):
    from ssrl_trl.rollout import ScriptedBackend
    from ssrl_trl.train import build_trainer, run_training

    recipe = load_recipe(_tiny_autorefine_recipe(tmp_path, tiny_model_dir, shared_data))
    assert recipe.tag_set() is AUTOREFINE
    run = build_trainer(recipe)
    run.rollout.backend = ScriptedBackend(tokenizer, _policy(tokenizer))
    assert run_training(run, recipe) == 0

    records = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 16  # 2 steps x 2 questions x 4 samples
    for rec in records:
        assert "<refine> and </refine>" in rec["prompt"]  # the built-in template explains the note
        assert rec["num_searches"] == 1 and rec["stop_reason"] == "answer"
        _check_mask(rec, tokenizer)
        right = rec["answer"] == "Rome"
        expected = {"autorefine": 1.0 if right else 0.1, "format": 1.0, "tag_presence": 1.0}
        assert rec["rewards"] == pytest.approx(expected)
    assert sorted({r["rewards"]["autorefine"] for r in records}) == [0.1, 1.0]  # both cases scored
    logs = [h for h in run.trainer.state.log_history if "autorefine/refine" in h]
    assert len(logs) == 2 and all(h["autorefine/refine"] == 1.0 and h["autorefine/em"] == 0.5 for h in logs)


@pytest.mark.slow
def test_eval_recipe_scores_the_autorefine_format(
    tmp_path, tiny_model_dir, shared_data, tokenizer, monkeypatch
):
    from ssrl_trl.evaluation import cli as eval_cli
    from ssrl_trl.rollout import ScriptedBackend

    path = _tiny_autorefine_recipe(tmp_path, tiny_model_dir, shared_data, evaluate=True)
    monkeypatch.setattr(
        eval_cli, "_load", lambda a: (None, tokenizer, ScriptedBackend(tokenizer, _policy(tokenizer)))
    )
    out = tmp_path / "eval"
    assert eval_cli.main(["--recipe", str(path), "--backend", "hf", "--no-progress", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "predictions_real.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        assert rec["format_valid"] == 1.0 and rec["searches"] == 1
        assert rec["em"] == (1.0 if rec["golden_answers"] == ["Rome"] else 0.0)
        assert "<refine>" in rec["completion"]
    settings = json.loads((out / "real.settings.json").read_text())
    assert settings["format_check"] == "autorefine"
