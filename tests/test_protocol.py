"""Tag sets and the parsing of model output (``ssrl_trl.protocol``).

Tables first, one row per behaviour a reviewer should be able to check by eye; then the doctests
of the four foundation modules.
"""

from __future__ import annotations

import doctest
import time

import pytest

from ssrl_trl import formats, protocol, rewards, scoring
from ssrl_trl.protocol import (
    MAX_QUERY_CHARS,
    R1_SEARCHER,
    SEARCH_R1,
    SSRL,
    TAG_SETS,
    Action,
    Span,
    TagSet,
    extract_answer,
    find_spans,
    get_tag_set,
    parse_action,
)

# ---------------------------------------------------------------------------------------------
# Tag sets


def test_builtin_tag_sets_are_registered_under_their_names():
    assert set(TAG_SETS) == {"search_r1", "ssrl", "r1_searcher", "autorefine"}
    for name, tags in TAG_SETS.items():
        assert tags.name == name
        assert get_tag_set(name) is tags


def test_ssrl_uses_the_search_r1_tags():
    assert (SSRL.search, SSRL.information, SSRL.answer, SSRL.think) == (
        SEARCH_R1.search,
        SEARCH_R1.information,
        SEARCH_R1.answer,
        SEARCH_R1.think,
    )


def test_r1_searcher_tags_are_the_papers():
    assert R1_SEARCHER.search == ("<|begin_of_query|>", "<|end_of_query|>")
    assert R1_SEARCHER.information == ("<|begin_of_documents|>", "<|end_of_documents|>")
    assert R1_SEARCHER.answer == ("<answer>", "</answer>")


@pytest.mark.parametrize(
    ("tags", "on_search", "on_answer"),
    [
        (SEARCH_R1, ["</search>", "</answer>"], ["</answer>"]),
        (R1_SEARCHER, ["<|end_of_query|>", "</answer>"], ["</answer>"]),
    ],
    ids=["search_r1", "r1_searcher"],
)
def test_stop_strings(tags, on_search, on_answer):
    assert tags.stop_on_search == on_search
    assert tags.stop_on_answer == on_answer


def test_get_tag_set_passes_a_tag_set_through_and_builds_from_a_mapping():
    custom = {
        "name": "mine",
        "search": ["<q>", "</q>"],
        "information": ["<d>", "</d>"],
        "answer": ["<a>", "</a>"],
    }
    built = get_tag_set(custom)
    assert built == TagSet("mine", ("<q>", "</q>"), ("<d>", "</d>"), ("<a>", "</a>"))
    assert built.think == ("<think>", "</think>")  # default reasoning tag
    assert get_tag_set(built) is built
    assert get_tag_set({**custom, "think": None}).think is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown tag set 'nope'"),
        (42, "unknown tag set 42"),
        ({"search": ["<q>", "</q>"], "information": ["<d>", "</d>"]}, "missing \\['answer'\\]"),
        (
            {"search": ["<q>", "</q>"], "information": ["<d>", "</d>"], "answer": ["<a>", "</a>"], "x": 1},
            "unknown",
        ),
        ({"search": ["<q>"], "information": ["<d>", "</d>"], "answer": ["<a>", "</a>"]}, "must be a pair"),
        ({"search": ["<q>", ""], "information": ["<d>", "</d>"], "answer": ["<a>", "</a>"]}, "non-empty"),
        ({"search": ["<q>", "<q>"], "information": ["<d>", "</d>"], "answer": ["<a>", "</a>"]}, "identical"),
        ({"search": ["<q>", "</q>"], "information": ["<q>", "</d>"], "answer": ["<a>", "</a>"]}, "distinct"),
    ],
    ids=[
        "unknown-name",
        "not-a-name",
        "missing-answer",
        "unknown-key",
        "not-a-pair",
        "empty-tag",
        "open-equals-close",
        "tag-reused",
    ],
)
def test_get_tag_set_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        get_tag_set(spec)


# ---------------------------------------------------------------------------------------------
# find_spans

INFO = SEARCH_R1.information


@pytest.mark.parametrize(
    ("text", "include_unclosed", "expected"),
    [
        ("no tags at all", False, []),
        ("<information>doc</information>", False, [("doc", True)]),
        ("<information>line 1\nline 2\n</information>", False, [("line 1\nline 2\n", True)]),
        ("<information>a</information> x <information>b</information>", False, [("a", True), ("b", True)]),
        ("<information></information>", False, [("", True)]),
        ("<information>a<information>b</information></information>", False, [("a<information>b", True)]),
        ("</information>stray close<information>x</information>", False, [("x", True)]),
        ("<information>cut off by the budget", False, []),
        ("<information>cut off by the budget", True, [("cut off by the budget", False)]),
        ("<information>a</information><information>b", True, [("a", True), ("b", False)]),
        ("<informat", True, []),
        ("<information>Ünïcødé 北京 🚀</information>", False, [("Ünïcødé 北京 🚀", True)]),
    ],
    ids=[
        "none",
        "one",
        "multi-line (the DOTALL bug)",
        "repeated",
        "empty",
        "nested-open-belongs-to-outer",
        "stray-close-ignored",
        "unclosed-dropped",
        "unclosed-kept",
        "closed-then-unclosed",
        "partial-tag",
        "unicode",
    ],
)
def test_find_spans(text, include_unclosed, expected):
    spans = find_spans(text, INFO, include_unclosed=include_unclosed)
    assert [(s.content(text), s.closed) for s in spans] == expected
    for s in spans:
        assert text[s.start :].startswith(INFO[0])
        if s.closed:
            assert text[s.start : s.end].endswith(INFO[1])
            assert s.inner_end + len(INFO[1]) == s.end
        else:
            assert s.end == s.inner_end == len(text)


def test_find_spans_offsets_are_exact():
    text = "ab<information>xyz</information>c"
    assert find_spans(text, INFO) == [Span(start=2, end=32, inner_start=15, inner_end=18, closed=True)]


def test_find_spans_sees_tags_split_across_turns_once_joined():
    turns = ["<think>ok</think><search>q</search>\n\n<infor", "mation>doc</informa", "tion>"]
    assert find_spans(turns[0], INFO) == []
    assert [s.content("".join(turns)) for s in find_spans("".join(turns), INFO)] == ["doc"]


@pytest.mark.parametrize("bad", [None, 3, b"<information>x</information>", ["<information>x</information>"]])
def test_find_spans_on_non_strings_is_empty(bad):
    assert find_spans(bad, INFO) == []


# ---------------------------------------------------------------------------------------------
# extract_answer


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>Paris</answer>", "Paris"),
        ("<think>hm</think>\n<answer>  Paris \n</answer>", "Paris"),
        ("no answer block", None),
        ("", None),
        ("<answer>unclosed", None),
        ("</answer>", None),
        ("stray </answer> then <answer>x", None),
        ("<answer> </answer>", ""),
        ("<answer></answer>", ""),
        ("<answer>Rome</answer> wait, no: <answer>Paris</answer>", "Paris"),
        ("<answer>Rome</answer> then <answer>unclosed", "Rome"),
        ("<answer><answer>x</answer></answer>", "x"),
        ("<answer>x</answer> junk </answer>", "x"),
        ("<answer>New\nYork\nCity</answer>", "New\nYork\nCity"),
        ("<answer>北京</answer>", "北京"),
        (
            "<search>q</search><information><answer>doc says Rome</answer></information><answer>Paris</answer>",
            "Paris",
        ),
    ],
    ids=[
        "plain",
        "whitespace-stripped",
        "no-block",
        "empty-text",
        "unclosed",
        "close-only",
        "close-before-open",
        "whitespace-only-is-empty-string",
        "empty-is-empty-string",
        "last-wins (self-correction)",
        "last-complete-wins",
        "nested -> innermost",
        "outer-stray-close",
        "multi-line",
        "unicode",
        "answer-inside-documents-not-last",
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_answer_prompt_example_trap():
    """Search-R1 pitfall: the prompt shows ``<answer> Beijing </answer>``. Only the completion is
    parsed, so a completion without an answer has none, and the prompt's example never wins."""
    prompt = "Answer inside <answer> and </answer>, for example <answer> Beijing </answer>. Question: ..."
    assert extract_answer(prompt) == "Beijing"  # why the prompt must never be passed
    assert extract_answer("<think>I am not sure</think>") is None
    assert extract_answer(prompt + "<think>x</think><answer>Paris</answer>") == "Paris"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>x</think><|begin_of_query|>q<|end_of_query|><answer>Paris</answer>", "Paris"),
        ("<|begin_of_documents|><answer>no</answer><|end_of_documents|>", "no"),
    ],
    ids=["r1-searcher", "r1-searcher-answer-in-docs"],
)
def test_extract_answer_r1_searcher(completion, expected):
    assert extract_answer(completion, R1_SEARCHER) == expected


def test_extract_answer_custom_tags():
    tags = TagSet("custom", ("<q>", "</q>"), ("<d>", "</d>"), ("[ANS]", "[/ANS]"))
    assert extract_answer("<answer>no</answer> [ANS] yes [/ANS]", tags) == "yes"
    assert extract_answer("<answer>no</answer>", tags) is None


@pytest.mark.parametrize("bad", [None, 1, ["<answer>x</answer>"]])
def test_extract_answer_on_non_strings_is_none(bad):
    assert extract_answer(bad) is None


# ---------------------------------------------------------------------------------------------
# parse_action


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        ("<think>x</think><search>capital of France</search>", Action("search", "capital of France", end=50)),
        ("<search>  capital\n  of\tFrance \n</search>", Action("search", "capital of France", end=40)),
        ("<answer> Paris </answer>", Action("answer", "Paris", end=24)),
        ("<answer></answer>", Action("answer", "", end=17)),
        ("<search>a</search><answer>b</answer>", Action("search", "a", end=18)),
        ("<answer>b</answer><search>a</search>", Action("answer", "b", end=18)),
        ("<search>a</search><search>b</search>", Action("search", "a", end=18)),
        ("<search><search>inner</search></search>", Action("search", "inner", end=30)),
        ("</search>stray<search>a</search>", Action("search", "a", end=32)),
        ("<search>q <answer>x</answer> more</search>", Action("answer", "x", end=28)),
        ("<search>北京 天气 🚀</search>", Action("search", "北京 天气 🚀", end=24)),
        ("<search></search>", Action("invalid", error="empty search query", end=17)),
        ("<search> \n\t </search>", Action("invalid", error="empty search query", end=21)),
        ("", Action("invalid", error="empty turn")),
        ("just thinking out loud", Action("invalid", error="no complete search or answer block")),
        ("<search>unclosed query", Action("invalid", error="no complete search or answer block")),
        ("</search></answer>", Action("invalid", error="no complete search or answer block")),
        ("<sear", Action("invalid", error="no complete search or answer block")),
        ("ch>q</search>", Action("invalid", error="no complete search or answer block")),
    ],
    ids=[
        "search",
        "multi-line-query-collapsed",
        "answer",
        "empty-answer-is-an-answer",
        "first-close-wins: search",
        "first-close-wins: answer",
        "repeated-search-first",
        "nested-search-innermost",
        "stray-close-skipped",
        "answer-closes-first",
        "unicode-query",
        "empty-query",
        "whitespace-query",
        "empty-turn",
        "no-action",
        "unclosed-search",
        "closes-only",
        "tag-split-across-turns (first half)",
        "tag-split-across-turns (second half)",
    ],
)
def test_parse_action(turn, expected):
    action = parse_action(turn)
    assert action == expected
    if action.kind != "invalid" or action.end >= 0:
        closing = {"search": "</search>", "answer": "</answer>", "invalid": "</search>"}[action.kind]
        assert turn[: action.end].endswith(closing)


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (
            "<think>x</think><|begin_of_query|>who wrote Dune<|end_of_query|>",
            Action("search", "who wrote Dune", end=64),
        ),
        ("<|begin_of_query|><|end_of_query|>", Action("invalid", error="empty search query", end=34)),
        ("<search>not my tags</search><answer>Herbert</answer>", Action("answer", "Herbert", end=52)),
    ],
    ids=["query", "empty-query", "search-r1-tags-are-text"],
)
def test_parse_action_r1_searcher(turn, expected):
    assert parse_action(turn, R1_SEARCHER) == expected


def test_parse_action_truncates_long_queries():
    action = parse_action("<search>" + "x" * (MAX_QUERY_CHARS + 50) + "</search>")
    assert action.kind == "search"
    assert action.content == "x" * MAX_QUERY_CHARS
    short = parse_action("<search>" + "x" * MAX_QUERY_CHARS + "</search>")
    assert len(short.content) == MAX_QUERY_CHARS


@pytest.mark.parametrize("bad", [None, 7, ["<search>q</search>"]])
def test_parse_action_on_non_strings_is_invalid(bad):
    assert parse_action(bad) == Action("invalid", error="empty turn")


# ---------------------------------------------------------------------------------------------
# Cost: parsing is documented as linear, so 100k characters of adversarial text is instant.


@pytest.mark.parametrize(
    "text",
    [
        "</answer>" * 12_000,
        "</search>" * 12_000,
        "<answer>" * 12_000,
        "<search>" * 12_000,
        "</answer><answer>" * 6_000,
    ],
    ids=["stray-answer-closes", "stray-search-closes", "answer-opens", "search-opens", "alternating"],
)
def test_parsing_100k_adversarial_text_is_fast(text):
    start = time.perf_counter()
    for _ in range(5):
        extract_answer(text)
        parse_action(text)
        find_spans(text, SEARCH_R1.answer, include_unclosed=True)
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------------------------------------
# Doctests of the foundation modules (the examples in their docstrings must stay true).


def test_doctests_of_foundation_modules_pass():
    attempted = 0
    for module in (protocol, scoring, formats, rewards):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, f"doctest failures in {module.__name__}"
        attempted += result.attempted
    assert attempted >= 5  # scoring and formats carry examples; an empty run would prove nothing
