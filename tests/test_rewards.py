"""Reward callables for TRL (``ssrl_trl.rewards``) and their recipe entry points (``rewards/*.py``).

Every reward is called the way GRPOTrainer calls it: ``f(prompts=..., completions=..., **columns)``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rewards.r1_searcher
import rewards.search_r1
import rewards.shaping
import rewards.ssrl

from ssrl_trl.protocol import R1_SEARCHER
from ssrl_trl.rewards import (
    AnswerF1Reward,
    FormatReward,
    LengthGuardReward,
    R1SearcherStage1Reward,
    R1SearcherStage2Reward,
    RetrievalHitReward,
    SearchCountReward,
    SearchR1EMReward,
    SearchR1FormatReward,
    SSRLReward,
    completion_text,
)

# Hand-written completions (Search-R1 / SSRL tags).
ROUND = "<search>capital of France</search><information>Paris is the capital.</information>"
GOOD_PARIS = "<think>a</think>" + ROUND + "<think>b</think><answer>Paris</answer>"  # format 1.0, grammar ok
GOOD_ROME = GOOD_PARIS.replace("<answer>Paris", "<answer>Rome")
HALF_PARIS = "<think>a</think><answer>Paris</answer>"  # ssrl format 0.5, grammar ok
SLOPPY_PARIS = "Let me see. <answer>Paris</answer>"  # no think: format 0, grammar broken
SLOPPY_ROME = "Let me see. <answer>Rome</answer>"
NO_ANSWER = "<think>I do not know</think>"
PROMPT_WITH_EXAMPLE = (
    "Answer in <answer></answer>, e.g. <answer> Beijing </answer>. Question: capital of France?"
)

# R1-Searcher tags.
R1_ROUND = (
    "<|begin_of_query|>capital of France<|end_of_query|><|begin_of_documents|>Paris<|end_of_documents|>"
)
R1_GOOD = "<think>look it up " + R1_ROUND + "</think><answer>Paris</answer>"
R1_GOOD_NO_SEARCH = "<think>I know it</think><answer>Paris</answer>"
R1_BAD_FORMAT = R1_ROUND + "<answer>Paris</answer>"  # searched, but no leading think
R1_PARTIAL = "<think>look it up " + R1_ROUND + "</think><answer>Paris France</answer>"  # F1 = 2/3


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def call(reward, completions, golden=None, **kwargs):
    if golden is not None:
        kwargs.setdefault("golden_answers", golden)
    return reward(prompts=["q"] * len(completions), completions=completions, **kwargs)


class RecordingLogger:
    """Stands in for GRPOTrainer's ``log_metric``."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def __call__(self, name: str, value: float) -> None:
        self.calls.append((name, value))

    def as_dict(self) -> dict[str, float]:
        return dict(self.calls)


# ---------------------------------------------------------------------------------------------
# completion_text


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        (chat("<answer>x</answer>"), "<answer>x</answer>"),
        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "ab"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "NO"}], "a"),
        ([{"role": "tool", "content": "NO"}, {"content": "implicit assistant"}], "implicit assistant"),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "assistant"}], ""),
        ([], ""),
        (None, ""),
        (42, ""),
        (["not a message"], ""),
    ],
    ids=[
        "string",
        "empty-string",
        "conversational",
        "several-assistant-messages",
        "user-message-skipped",
        "tool-skipped-role-defaults-to-assistant",
        "none-content",
        "missing-content",
        "empty-conversation",
        "none",
        "number",
        "list-of-strings",
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


# ---------------------------------------------------------------------------------------------
# Outcome rewards: one table, every reward with its default weights.

REWARD_TABLE = [
    # SSRL: 0.9 * EM + 0.1 * format
    (SSRLReward(), GOOD_PARIS, "Paris", 1.0),
    (SSRLReward(), HALF_PARIS, "Paris", 0.95),
    (SSRLReward(), SLOPPY_PARIS, "Paris", 0.9),
    (SSRLReward(), GOOD_ROME, "Paris", 0.1),
    (SSRLReward(), NO_ANSWER, "Paris", 0.0),
    (SSRLReward(), GOOD_PARIS, ["Lutetia", "paris"], 1.0),
    (SSRLReward(), GOOD_PARIS, {"target": np.array(["Lutetia", "Paris"], dtype=object)}, 1.0),
    (SSRLReward(), GOOD_PARIS.replace("Paris</answer>", " </answer>"), "Paris", 0.1),
    (SSRLReward(em_weight=0.5, format_weight=0.5), HALF_PARIS, "Paris", 0.75),
    # Search-R1 EM: 1 or 0
    (SearchR1EMReward(), SLOPPY_PARIS, "Paris", 1.0),
    (SearchR1EMReward(), "<answer>The paris.</answer>", "Paris", 1.0),
    (SearchR1EMReward(), "<answer>Paris, France</answer>", "Paris", 0.0),
    (SearchR1EMReward(), "<answer>Rome</answer> no wait <answer>Paris</answer>", "Paris", 1.0),
    (SearchR1EMReward(), "<answer>Paris</answer> no wait <answer>Rome</answer>", "Paris", 0.0),
    (SearchR1EMReward(), "<answer><answer>Paris</answer></answer>", "Paris", 1.0),
    (SearchR1EMReward(), NO_ANSWER, "Paris", 0.0),
    (SearchR1EMReward(), "<answer></answer>", "Paris", 0.0),
    (SearchR1EMReward(), "<answer>Rome</answer>", ["Paris", "Rome"], 1.0),
    # Search-R1 format-aware: 1 / 0.8 / 0.2 / 0.1 / 0
    (SearchR1FormatReward(), GOOD_PARIS, "Paris", 1.0),
    (SearchR1FormatReward(), SLOPPY_PARIS, "Paris", 0.8),
    (SearchR1FormatReward(), GOOD_ROME, "Paris", 0.2),
    (SearchR1FormatReward(), SLOPPY_ROME, "Paris", 0.1),
    (SearchR1FormatReward(), NO_ANSWER, "Paris", 0.0),
    (SearchR1FormatReward(fail=-1.0), "", "Paris", -1.0),
    # R1-Searcher stage 1: 0.5 * searched + 0.5 * format + 0.5 * F1
    (R1SearcherStage1Reward(), R1_GOOD, "Paris", 1.5),
    (R1SearcherStage1Reward(), R1_GOOD_NO_SEARCH, "Paris", 1.0),
    (R1SearcherStage1Reward(), R1_BAD_FORMAT, "Paris", 1.0),
    (R1SearcherStage1Reward(), R1_PARTIAL, "Paris", 1.0 + 0.5 * 2 / 3),
    (R1SearcherStage1Reward(), "<|begin_of_query|>unclosed", "Paris", 0.0),
    (R1SearcherStage1Reward(answer_weight=0.0), R1_GOOD, "Paris", 1.0),
    # R1-Searcher stage 2: F1 if format ok else -2
    (R1SearcherStage2Reward(), R1_GOOD, "Paris", 1.0),
    (R1SearcherStage2Reward(), R1_PARTIAL, "Paris", 2 / 3),
    (R1SearcherStage2Reward(), R1_GOOD.replace(">Paris</answer>", ">Rome</answer>"), "Paris", 0.0),
    (R1SearcherStage2Reward(), R1_BAD_FORMAT, "Paris", -2.0),
    (R1SearcherStage2Reward(), "", "Paris", -2.0),
    (R1SearcherStage2Reward(), R1_GOOD.replace(">Paris<", ">yes<"), "no", 0.0),
    (R1SearcherStage2Reward(format_penalty=-1.0), R1_BAD_FORMAT, "Paris", -1.0),
]
REWARD_IDS = [
    "ssrl: right, full format",
    "ssrl: right, half format",
    "ssrl: right, no format",
    "ssrl: wrong, full format",
    "ssrl: no answer",
    "ssrl: multiple golden",
    "ssrl: dict-target numpy golden",
    "ssrl: empty answer",
    "ssrl: custom weights",
    "em: right",
    "em: normalised",
    "em: cover is not exact",
    "em: last answer wins",
    "em: last answer wins (wrong)",
    "em: nested answer",
    "em: no answer",
    "em: empty answer",
    "em: multiple golden",
    "fmt: right + format",
    "fmt: right, bad format",
    "fmt: wrong, good format",
    "fmt: wrong, parsable",
    "fmt: no answer",
    "fmt: custom fail value",
    "stage1: searched + format + right",
    "stage1: no search",
    "stage1: bad format",
    "stage1: partial F1",
    "stage1: nothing",
    "stage1: retrieval+format only",
    "stage2: right",
    "stage2: partial F1",
    "stage2: wrong",
    "stage2: bad format penalty",
    "stage2: empty penalty",
    "stage2: yes/no special case",
    "stage2: custom penalty",
]


@pytest.mark.parametrize(("reward", "completion", "golden", "expected"), REWARD_TABLE, ids=REWARD_IDS)
def test_outcome_rewards_on_strings(reward, completion, golden, expected):
    assert call(reward, [completion], [golden]) == [pytest.approx(expected)]


@pytest.mark.parametrize(("reward", "completion", "golden", "expected"), REWARD_TABLE, ids=REWARD_IDS)
def test_outcome_rewards_on_conversational_completions(reward, completion, golden, expected):
    assert call(reward, [chat(completion)], [golden]) == [pytest.approx(expected)]


def test_rewards_score_a_batch_in_order():
    completions = [GOOD_PARIS, GOOD_ROME, NO_ANSWER, SLOPPY_PARIS]
    golden = ["Paris", "Paris", "Paris", ["x", "paris"]]
    assert call(SearchR1FormatReward(), completions, golden) == [1.0, 0.2, 0.0, 0.8]
    assert call(SearchR1EMReward(), completions, golden) == [1.0, 0.0, 0.0, 1.0]


def test_rewards_return_python_floats():
    for reward in (SSRLReward(), SearchR1EMReward(), SearchR1FormatReward(), R1SearcherStage2Reward()):
        values = call(reward, [GOOD_PARIS, NO_ANSWER], ["Paris", "Paris"])
        assert all(isinstance(v, float) for v in values), reward.__name__


# ---------------------------------------------------------------------------------------------
# The prompt-example trap: the prompt's <answer> example is never scored.


@pytest.mark.parametrize(
    "reward",
    [SSRLReward(), SearchR1EMReward(), SearchR1FormatReward(), R1SearcherStage1Reward(answer_weight=1.0)],
    ids=["ssrl", "search_r1_em", "search_r1_format", "r1_searcher_stage1"],
)
def test_prompt_answer_example_is_never_scored(reward):
    for prompts in ([PROMPT_WITH_EXAMPLE], [[{"role": "user", "content": PROMPT_WITH_EXAMPLE}]]):
        assert reward(prompts=prompts, completions=[NO_ANSWER], golden_answers=["Beijing"]) == [0.0]
        hit = reward(prompts=prompts, completions=["<answer>Beijing</answer>"], golden_answers=["Beijing"])
        assert hit[0] > 0.0  # the same golden answer does score when the completion gives it


# ---------------------------------------------------------------------------------------------
# Golden-answer column


@pytest.mark.parametrize(
    "reward",
    [
        SSRLReward(),
        SearchR1EMReward(),
        SearchR1FormatReward(),
        R1SearcherStage1Reward(),
        R1SearcherStage2Reward(),
    ],
    ids=["ssrl", "search_r1_em", "search_r1_format", "stage1", "stage2"],
)
def test_missing_golden_column_raises_key_error_naming_it(reward):
    with pytest.raises(KeyError, match="golden_answers"):
        reward(prompts=["q"], completions=[GOOD_PARIS], answer=["Paris"])
    custom = type(reward)(golden_key="reference")
    with pytest.raises(KeyError, match="'reference'.*available: \\['answer'"):
        custom(prompts=["q"], completions=[GOOD_PARIS], answer=["Paris"])


def test_golden_key_selects_the_column():
    reward = SearchR1EMReward(golden_key="reference")
    out = reward(prompts=["q"], completions=[SLOPPY_PARIS], reference=["Paris"], golden_answers=["Rome"])
    assert out == [1.0]


def test_golden_column_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 golden answers for 2 completions"):
        call(SearchR1EMReward(), [GOOD_PARIS, GOOD_ROME], ["Paris"])


def test_empty_batch_gives_empty_list():
    assert SearchR1EMReward()(prompts=[], completions=[], golden_answers=[]) == []


# ---------------------------------------------------------------------------------------------
# Logging through log_metric


@pytest.mark.parametrize(
    ("reward", "completions", "expected"),
    [
        (SSRLReward(), [GOOD_PARIS, HALF_PARIS], {"ssrl/em": 1.0, "ssrl/format": 0.75, "ssrl/searches": 0.5}),
        (SearchR1EMReward(), [GOOD_PARIS, GOOD_ROME], {"search_r1_em/em": 0.5, "search_r1_em/searches": 1.0}),
        (
            SearchR1FormatReward(),
            [GOOD_PARIS, SLOPPY_ROME],
            {"search_r1_format/em": 0.5, "search_r1_format/format": 0.5, "search_r1_format/searches": 0.5},
        ),
        (
            R1SearcherStage1Reward(),
            [R1_GOOD, R1_BAD_FORMAT],
            {
                "r1_searcher_stage1/f1": 1.0,
                "r1_searcher_stage1/format": 0.5,
                "r1_searcher_stage1/searches": 1.0,
            },
        ),
        (
            R1SearcherStage2Reward(),
            [R1_PARTIAL, R1_GOOD_NO_SEARCH],
            {
                "r1_searcher_stage2/f1": pytest.approx((2 / 3 + 1) / 2),
                "r1_searcher_stage2/format": 1.0,
                "r1_searcher_stage2/searches": 0.5,
            },
        ),
    ],
    ids=["ssrl", "search_r1_em", "search_r1_format", "stage1", "stage2"],
)
def test_components_are_logged_through_log_metric(reward, completions, expected):
    logger = RecordingLogger()
    call(reward, completions, ["Paris"] * len(completions), log_metric=logger)
    assert logger.as_dict() == expected
    assert len(logger.calls) == len(expected)  # one value per component per call
    assert all(isinstance(v, float) for _, v in logger.calls)


def test_no_log_metric_no_logging_and_same_scores():
    reward = SSRLReward()
    logger = RecordingLogger()
    assert call(reward, [GOOD_PARIS], ["Paris"]) == call(reward, [GOOD_PARIS], ["Paris"], log_metric=logger)
    assert call(reward, [GOOD_PARIS], ["Paris"], log_metric=None) == [1.0]


def test_logging_works_for_one_completion_and_skips_an_empty_batch():
    logger = RecordingLogger()
    call(SearchR1EMReward(), [SLOPPY_PARIS], ["Paris"], log_metric=logger)
    assert logger.as_dict() == {"search_r1_em/em": 1.0, "search_r1_em/searches": 0.0}
    empty = RecordingLogger()
    assert SearchR1EMReward()(prompts=[], completions=[], golden_answers=[], log_metric=empty) == []
    assert empty.calls == []  # nothing to average, and no division by zero


def test_rollout_search_count_is_preferred_over_recounting():
    logger = RecordingLogger()
    call(
        SearchR1EMReward(),
        [GOOD_PARIS, GOOD_PARIS],
        ["Paris", "Paris"],
        num_searches=[3, 5],
        log_metric=logger,
    )
    assert logger.as_dict()["search_r1_em/searches"] == 4.0


# ---------------------------------------------------------------------------------------------
# FormatReward


@pytest.mark.parametrize(
    ("method", "completion", "expected"),
    [
        ("ssrl", GOOD_PARIS, 1.0),
        ("ssrl", HALF_PARIS, 0.5),
        ("ssrl", SLOPPY_PARIS, 0.0),
        ("search_r1", GOOD_PARIS, 1.0),
        ("search_r1", HALF_PARIS, 1.0),
        ("search_r1", SLOPPY_PARIS, 0.0),
        ("r1_searcher", R1_GOOD, 1.0),
        ("r1_searcher", R1_BAD_FORMAT, 0.0),
        ("r1_searcher", GOOD_PARIS, 1.0),
    ],
    ids=[
        "ssrl-full",
        "ssrl-half",
        "ssrl-none",
        "search_r1-ok",
        "search_r1-no-search-ok",
        "search_r1-bad",
        "r1_searcher-ok",
        "r1_searcher-bad",
        "r1_searcher-search-r1-tags-are-plain-text",
    ],
)
def test_format_reward(method, completion, expected):
    reward = FormatReward(tags=method)
    assert reward(prompts=["q"], completions=[completion]) == [expected]  # needs no golden column
    assert reward(prompts=["q"], completions=[chat(completion)]) == [expected]


def test_format_reward_rejects_unknown_tag_set():
    with pytest.raises(ValueError, match="unknown tag set 'nope'.*r1_searcher"):
        FormatReward(tags="nope")


def test_format_reward_tags_can_be_overridden():
    reward = FormatReward(tags="search_r1").with_tags("r1_searcher")
    assert reward.tags is R1_SEARCHER
    assert reward(completions=["<think>x</think>" + R1_ROUND + "<answer>a</answer>"]) == [1.0]


# ---------------------------------------------------------------------------------------------
# Shaping rewards


@pytest.mark.parametrize(
    ("kwargs", "completion", "extra", "expected"),
    [
        ({}, GOOD_PARIS, {}, 0.1),
        ({}, HALF_PARIS, {}, -0.1),
        ({}, "<think>a</think>" + ROUND * 4 + "<answer>x</answer>", {}, 0.1),
        ({}, "<think>a</think>" + ROUND * 5 + "<answer>x</answer>", {}, -0.1),
        ({"min_searches": 0, "max_searches": 0}, HALF_PARIS, {}, 0.1),
        ({"bonus": 1.0, "penalty": 2.0}, HALF_PARIS, {}, -2.0),
        ({}, HALF_PARIS, {"num_searches": [2]}, 0.1),
        ({}, GOOD_PARIS, {"num_searches": [0]}, -0.1),
        ({"tags": "r1_searcher"}, R1_GOOD, {}, 0.1),
        ({"tags": "r1_searcher"}, GOOD_PARIS, {}, -0.1),
    ],
    ids=[
        "one-search-bonus",
        "no-search-penalty",
        "at-max",
        "over-max",
        "zero-allowed",
        "custom-values",
        "rollout-count-used",
        "rollout-count-overrides-text",
        "r1-tags",
        "r1-tags-ignore-search-r1-tags",
    ],
)
def test_search_count_reward(kwargs, completion, extra, expected):
    assert SearchCountReward(**kwargs)(prompts=["q"], completions=[completion], **extra) == [expected]


@pytest.mark.parametrize(
    ("completion", "golden", "expected"),
    [
        (GOOD_ROME, ["Paris"], 0.2),  # the answer is wrong but the documents held the gold one
        (GOOD_PARIS, ["Lyon"], 0.0),  # documents without the gold answer
        (HALF_PARIS, ["Paris"], 0.0),  # no information block: an answer alone earns nothing here
        ("<information>the capital</information><answer>x</answer>", ["The Capital"], 0.2),  # normalised
        ("<information>Parisian life</information>", ["Paris"], 0.2),  # substring, as FlashRAG cover-EM
        ("<information>unclosed Paris", ["Paris"], 0.0),
    ],
    ids=["wrong-answer-hit", "miss", "no-information", "normalised", "substring", "unclosed"],
)
def test_retrieval_hit_reward(completion, golden, expected):
    assert RetrievalHitReward()(prompts=["q"], completions=[completion], golden_answers=[golden]) == [
        expected
    ]


def test_retrieval_hit_reward_reads_its_tag_set_and_logs_the_rate():
    logged: dict[str, float] = {}
    reward = RetrievalHitReward(bonus=0.5).with_tags(R1_SEARCHER)
    opening, closing = R1_SEARCHER.information
    texts = [f"{opening}Paris{closing}", "<information>Paris</information>"]
    scores = reward(completions=texts, golden_answers=[["Paris"]] * 2, log_metric=logged.__setitem__)
    assert scores == [0.5, 0.0] and logged == {"retrieval_hit/rate": 0.5}


@pytest.mark.parametrize(
    ("completion", "golden", "expected"),
    [
        (GOOD_PARIS, ["Paris"], 0.5),  # exact: full F1 times the weight
        ("<answer>Paris, France</answer>", ["Paris"], 0.5 * 2 / 3),  # overlaps: partial credit
        ("<answer>the city of Paris</answer>", ["Lyon", "paris"], 0.5 * 0.5),  # best golden; "the" dropped
        (GOOD_ROME, ["Paris"], 0.0),  # no overlap
        (NO_ANSWER, ["Paris"], 0.0),  # no answer
    ],
    ids=["exact", "overlap", "best-golden", "wrong", "no-answer"],
)
def test_answer_f1_reward_gives_partial_credit(completion, golden, expected):
    reward = AnswerF1Reward()
    assert reward(prompts=["q"], completions=[completion], golden_answers=[golden]) == [
        pytest.approx(expected)
    ]


def test_answer_f1_reward_scores_the_rollouts_final_answer_and_logs_f1():
    logged: dict[str, float] = {}
    reward = AnswerF1Reward(weight=1.0)
    texts = ["<answer>Rome</answer>", "<answer>Rome</answer>"]
    scores = reward(
        completions=texts,
        golden_answers=[["Paris"]] * 2,
        final_answer=["Paris", None],
        log_metric=logged.__setitem__,
    )
    assert scores == [1.0, 0.0] and logged == {"answer_f1/f1": 0.5}


def test_search_count_reward_rejects_min_above_max():
    with pytest.raises(ValueError, match="min_searches \\(3\\) > max_searches \\(2\\)"):
        SearchCountReward(min_searches=3, max_searches=2)


@pytest.mark.parametrize(
    ("kwargs", "completion", "extra", "expected"),
    [
        ({}, GOOD_PARIS, {}, 0.0),
        ({}, NO_ANSWER, {}, -0.5),
        ({}, "<think>x</think><answer>cut off", {}, -0.5),
        ({}, NO_ANSWER, {"truncated": [False]}, 0.0),
        ({}, GOOD_PARIS, {"truncated": [True]}, -0.5),
        ({"penalty": 1.0}, NO_ANSWER, {}, -1.0),
    ],
    ids=[
        "answered",
        "no-answer",
        "unclosed-answer",
        "rollout-not-truncated",
        "rollout-truncated",
        "custom-penalty",
    ],
)
def test_length_guard_reward(kwargs, completion, extra, expected):
    assert LengthGuardReward(**kwargs)(prompts=["q"], completions=[completion], **extra) == [expected]


# ---------------------------------------------------------------------------------------------
# TRL plumbing: names, pickling, recipe entry points


@pytest.mark.parametrize(
    ("reward", "name"),
    [
        (SSRLReward(), "ssrl"),
        (SearchR1EMReward(), "search_r1_em"),
        (SearchR1FormatReward(), "search_r1_format"),
        (R1SearcherStage1Reward(), "r1_searcher_stage1"),
        (R1SearcherStage2Reward(), "r1_searcher_stage2"),
        (FormatReward(), "format"),
        (SearchCountReward(), "search_count"),
        (LengthGuardReward(), "length_guard"),
        (AnswerF1Reward(), "answer_f1"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_rewards_have_a_metric_name_and_pickle(reward, name):
    assert reward.__name__ == name
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == name
    assert vars(clone).keys() == vars(reward).keys()
    completions = [GOOD_PARIS, R1_GOOD, NO_ANSWER]
    assert call(clone, completions, ["Paris"] * 3) == call(reward, completions, ["Paris"] * 3)


@pytest.mark.parametrize(
    ("entry", "cls", "tag_set"),
    [
        (rewards.ssrl.reward, SSRLReward, "ssrl"),
        (rewards.ssrl.format, FormatReward, "ssrl"),
        (rewards.search_r1.em, SearchR1EMReward, "search_r1"),
        (rewards.search_r1.format_aware, SearchR1FormatReward, "search_r1"),
        (rewards.search_r1.format, FormatReward, "search_r1"),
        (rewards.r1_searcher.stage1, R1SearcherStage1Reward, "r1_searcher"),
        (rewards.r1_searcher.stage2, R1SearcherStage2Reward, "r1_searcher"),
        (rewards.r1_searcher.format, FormatReward, "r1_searcher"),
        (rewards.shaping.search_count, SearchCountReward, "search_r1"),
        (rewards.shaping.length_guard, LengthGuardReward, "search_r1"),
        (rewards.shaping.answer_f1, AnswerF1Reward, "search_r1"),
    ],
    ids=[
        "ssrl.reward",
        "ssrl.format",
        "search_r1.em",
        "search_r1.format_aware",
        "search_r1.format",
        "r1_searcher.stage1",
        "r1_searcher.stage2",
        "r1_searcher.format",
        "shaping.search_count",
        "shaping.length_guard",
        "shaping.answer_f1",
    ],
)
def test_recipe_entry_points(entry, cls, tag_set):
    assert type(entry) is cls
    assert entry.tags.name == tag_set
    if isinstance(entry, FormatReward):
        assert entry.tags.format_check.name == tag_set


@pytest.mark.parametrize(
    ("factory", "kwargs", "completion", "expected"),
    [
        (rewards.ssrl.make, {"em_weight": 1.0, "format_weight": 0.0}, HALF_PARIS, 1.0),
        (rewards.search_r1.make_em, {"golden_key": "answer"}, SLOPPY_PARIS, 1.0),
        (rewards.search_r1.make_format_aware, {"correct": 0.5}, SLOPPY_PARIS, 0.5),
        (rewards.r1_searcher.make_stage1, {"answer_weight": 0.0}, R1_GOOD, 1.0),
        (rewards.r1_searcher.make_stage2, {"format_penalty": -1.0}, R1_BAD_FORMAT, -1.0),
        (rewards.shaping.make_search_count, {"min_searches": 0, "bonus": 0.3}, HALF_PARIS, 0.3),
        (rewards.shaping.make_length_guard, {"penalty": 0.25}, NO_ANSWER, -0.25),
    ],
    ids=[
        "ssrl.make",
        "make_em",
        "make_format_aware",
        "make_stage1",
        "make_stage2",
        "make_search_count",
        "make_length_guard",
    ],
)
def test_recipe_factories_take_keyword_arguments(factory, kwargs, completion, expected):
    reward = factory(**kwargs)
    key = kwargs.get("golden_key", "golden_answers")
    assert reward(prompts=["q"], completions=[completion], **{key: ["Paris"]}) == [pytest.approx(expected)]
