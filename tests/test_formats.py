"""Format checks of whole completions (``ssrl_trl.formats``), one table per method."""

from __future__ import annotations

import pytest

from ssrl_trl.formats import (
    PLACEHOLDER_QUERIES,
    r1_searcher_format_valid,
    search_r1_format_valid,
    ssrl_format_score,
)
from ssrl_trl.protocol import R1_SEARCHER, SEARCH_R1, SSRL, TagSet

# A well-formed search + self-written information round (SSRL / Search-R1 tags).
ROUND = "<search>who wrote Dune</search><information>Frank Herbert wrote Dune.</information>"
# The same for R1-Searcher tags.
R1_ROUND = "<|begin_of_query|>who wrote Dune<|end_of_query|><|begin_of_documents|>Herbert<|end_of_documents|>"


def _think(n: int) -> str:
    return "".join(f"<think>step {i}</think>" for i in range(n))


# ---------------------------------------------------------------------------------------------
# SSRL: min(0.5 * #think, 1) * balance, gated on start/end/queries, 0 beyond max_think.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>a</think>" + ROUND + "<think>b</think><answer>x</answer>", 1.0),
        ("<think>a</think><answer>x</answer>", 0.5),
        ("<think>a</think>" + ROUND + "<answer>x</answer>", 0.5),
        ("\n  <think>a</think>\n" + ROUND + "\n<think>b</think>\n<answer>x</answer>\n\n", 1.0),
        ("<think>a</think>\n" + ROUND + "\n" + ROUND + "<think>b</think><answer>x</answer>", 1.0),
        (_think(8) + "<answer>x</answer>", 1.0),
        (_think(9) + "<answer>x</answer>", 0.0),
        ("<think>a</think><think>b</think><think><answer>x</answer>", pytest.approx((2 / 3 + 1) / 2)),
        ("<think>a</think><think>b</think><search>who wrote Dune <answer>x</answer>", pytest.approx(2 / 3)),
        ("<think>x</think></answer>", 0.25),
        (ROUND + "<answer>x</answer>", 0.0),
        ("I think <think>a</think><answer>x</answer>", 0.0),
        ("<think>a</think><answer>x</answer> trailing", 0.0),
        ("<think>a</think><answer>x", 0.0),
        ("<think>a</think><search>who wrote Dune</search><think>b</think><answer>x</answer>", 0.0),
        (
            "<think>a</think><search>who wrote Dune</search> text <information>i</information><answer>x</answer>",
            0.0,
        ),
        (
            "<think>a</think><search>who\nwrote Dune</search><information>i</information><answer>x</answer>",
            0.0,
        ),
        ("<think>a</think><search> </search><information>i</information><answer>x</answer>", 0.0),
        ("<think>a</think><search>your query</search><information>i</information><answer>x</answer>", 0.0),
        ("<think>a</think><search>Query:</search><information>i</information><answer>x</answer>", 0.0),
        ("<think>a</think><search>...</search><information>i</information><answer>x</answer>", 0.0),
        ("", 0.0),
    ],
    ids=[
        "two-thinks-one-round (full marks)",
        "one-think (half)",
        "one-think-with-search (half)",
        "surrounding-whitespace",
        "two-rounds-back-to-back",
        "8-thinks-at-cap",
        "9-thinks-over-cap",
        "unclosed-think-lowers-balance",
        "unclosed-search-lowers-balance",
        "answer-close-without-open",
        "no-leading-think",
        "text-before-think",
        "text-after-answer",
        "unclosed-answer",
        "search-without-information",
        "text-between-search-and-information",
        "multi-line-query",
        "empty-query",
        "placeholder-query",
        "placeholder-query-punctuated",
        "placeholder-ellipsis",
        "empty",
    ],
)
def test_ssrl_format_score(text, expected):
    assert ssrl_format_score(text) == expected


def test_ssrl_format_score_max_think_is_a_parameter():
    text = _think(3) + "<answer>x</answer>"
    assert ssrl_format_score(text) == 1.0
    assert ssrl_format_score(text, max_think=2) == 0.0
    assert ssrl_format_score(text, max_think=3) == 1.0


@pytest.mark.parametrize("query", sorted(PLACEHOLDER_QUERIES - {""}))
def test_every_placeholder_query_zeroes_the_ssrl_format(query):
    text = f"<think>a</think><search>{query.upper()}</search><information>i</information><answer>x</answer>"
    assert ssrl_format_score(text) == 0.0
    real = "<think>a</think><search>capital of France</search><information>i</information><answer>x</answer>"
    assert ssrl_format_score(real) == 0.5


@pytest.mark.parametrize(
    ("text", "tags", "expected"),
    [
        ("<think>a " + R1_ROUND + "</think><think>b</think><answer>x</answer>", R1_SEARCHER, 1.0),
        ("<think>a</think><|begin_of_query|>q1 x<|end_of_query|><answer>x</answer>", R1_SEARCHER, 0.0),
        (
            "<q>who</q><d>doc</d><a>z</a>",
            TagSet("t", ("<q>", "</q>"), ("<d>", "</d>"), ("<a>", "</a>"), None),
            1.0,
        ),
        ("<q>who</q><a>z</a>", TagSet("t", ("<q>", "</q>"), ("<d>", "</d>"), ("<a>", "</a>"), None), 0.0),
    ],
    ids=[
        "r1-searcher-tags",
        "r1-searcher-query-without-documents",
        "no-think-tag-set",
        "no-think-missing-doc",
    ],
)
def test_ssrl_format_score_reads_the_tag_set(text, tags, expected):
    assert ssrl_format_score(text, tags) == expected


@pytest.mark.parametrize("bad", [None, 1, ["<think>a</think><answer>x</answer>"]])
def test_ssrl_format_score_on_non_strings_is_zero(bad):
    assert ssrl_format_score(bad) == 0.0


# ---------------------------------------------------------------------------------------------
# Search-R1: think (search information think?)* answer, only whitespace between blocks.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>a</answer>", True),
        ("<think>x</think>" + ROUND + "<think>y</think><answer>a</answer>", True),
        ("<think>x</think>" + ROUND + ROUND + "<answer>a</answer>", True),
        (
            "  <think>x</think>\n\n"
            + ROUND.replace("</search>", "</search>\n\n")
            + "\n\n<answer>a</answer>\n",
            True,
        ),
        (
            "<think>x</think><search>q</search><information><answer>no</answer></information><answer>a</answer>",
            True,
        ),
        ("<think>x</think><search></search><information>d</information><answer>a</answer>", True),
        ("<answer>a</answer>", False),
        (ROUND + "<answer>a</answer>", False),
        ("<think>x</think> so <answer>a</answer>", False),
        ("<think>x</think><answer>a</answer> bye", False),
        ("<think>x</think><search>q</search><answer>a</answer>", False),
        ("<think>x</think><think>y</think><answer>a</answer>", False),
        ("<think>x</think>" + ROUND + "<information>more</information><answer>a</answer>", False),
        ("<think>x</think>" + ROUND, False),
        ("<think>x<think>y</think></think><answer>a</answer>", False),
        ("<think>x</think><answer>a<search>q</answer>", False),
        ("<think>x</think><answer>a", False),
        ("<think>x</think><answer>a</answer><answer>b</answer>", False),
        ("<think>x", False),
        ("", False),
        (" \n ", False),
    ],
    ids=[
        "think-answer",
        "think-round-think-answer",
        "two-rounds-then-answer",
        "whitespace-between-blocks",
        "tags-inside-information-allowed",
        "empty-query-not-this-checks-business",
        "no-think",
        "starts-with-search",
        "text-between-blocks",
        "text-after-answer",
        "search-without-information",
        "think-think",
        "information-information",
        "no-answer",
        "nested-think",
        "open-tag-inside-answer",
        "unclosed-answer",
        "two-answers",
        "unclosed-think",
        "empty",
        "whitespace-only",
    ],
)
def test_search_r1_format_valid(text, expected):
    assert search_r1_format_valid(text) is expected


def test_search_r1_format_without_think_tag_starts_with_search_or_answer():
    tags = TagSet("t", ("<q>", "</q>"), ("<d>", "</d>"), ("<a>", "</a>"), think=None)
    assert search_r1_format_valid("<q>x</q><d>y</d><a>z</a>", tags) is True
    assert search_r1_format_valid("<a>z</a>", tags) is True
    assert search_r1_format_valid("<think>x</think><a>z</a>", tags) is False


def test_search_r1_format_with_r1_searcher_tags():
    text = "<think>x</think>" + R1_ROUND + "<answer>a</answer>"
    assert search_r1_format_valid(text, R1_SEARCHER) is True
    assert search_r1_format_valid(text, SEARCH_R1) is False


@pytest.mark.parametrize("bad", [None, 3, ["<think>x</think><answer>a</answer>"]])
def test_search_r1_format_on_non_strings_is_false(bad):
    assert search_r1_format_valid(bad) is False


# ---------------------------------------------------------------------------------------------
# R1-Searcher: queries inside the reasoning; one final answer; every query gets documents.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>look it up " + R1_ROUND + " so Herbert</think><answer>Frank Herbert</answer>", True),
        ("<think>easy</think><answer>x</answer>", True),
        ("<think>a</think>" + R1_ROUND + "<answer>x</answer>", True),
        ("<think>a " + R1_ROUND + R1_ROUND + "</think><answer>x</answer>", True),
        ("\n<think>a</think><answer>x</answer>\n", True),
        (R1_ROUND + "<answer>x</answer>", False),
        ("<think>a</think><answer>x</answer><answer>y</answer>", False),
        ("<think>a</think><answer>x</answer> ok", False),
        ("<think>a <answer></think><answer>x</answer>", False),
        ("<think>a</think><answer>x " + R1_ROUND + "</answer>", False),
        ("<think>a <|begin_of_query|>who wrote Dune<|end_of_query|></think><answer>x</answer>", False),
        ("<think>a<think>b</think><answer>x</answer>", False),
        (
            "<think>a <|begin_of_query|> <|end_of_query|><|begin_of_documents|>d<|end_of_documents|></think>"
            "<answer>x</answer>",
            False,
        ),
        (
            "<think>a <|begin_of_query|>who\nwrote<|end_of_query|><|begin_of_documents|>d<|end_of_documents|></think>"
            "<answer>x</answer>",
            False,
        ),
        ("<think>a <|begin_of_query|>who wrote</think><answer>x</answer>", False),
        (
            "<think>a <|begin_of_query|>query<|end_of_query|><|begin_of_documents|>d<|end_of_documents|></think>"
            "<answer>x</answer>",
            False,
        ),
        ("<think>a</think>", False),
        ("", False),
    ],
    ids=[
        "query-inside-think",
        "no-search-still-valid-format",
        "query-between-blocks",
        "two-queries",
        "surrounding-whitespace",
        "no-think",
        "two-answers",
        "answer-not-at-end",
        "stray-answer-open",
        "query-after-answer",
        "query-without-documents",
        "unbalanced-think",
        "empty-query",
        "multi-line-query",
        "unclosed-query",
        "placeholder-query",
        "no-answer",
        "empty",
    ],
)
def test_r1_searcher_format_valid(text, expected):
    assert r1_searcher_format_valid(text, R1_SEARCHER) is expected


def test_r1_searcher_format_reads_the_tag_set():
    search_r1_style = "<think>a</think>" + ROUND + "<answer>x</answer>"
    assert r1_searcher_format_valid(search_r1_style, SSRL) is True
    # with R1-Searcher tags, Search-R1 tags are plain text and the round counts as nothing
    assert (
        r1_searcher_format_valid("<think>a <search>q</search></think><answer>x</answer>", R1_SEARCHER) is True
    )
    assert r1_searcher_format_valid("<think>a <search>q</search></think><answer>x</answer>", SSRL) is False


@pytest.mark.parametrize("bad", [None, 3, ["<think>a</think><answer>x</answer>"]])
def test_r1_searcher_format_on_non_strings_is_false(bad):
    assert r1_searcher_format_valid(bad, R1_SEARCHER) is False
