"""Fuzz: >= 10,000 random and adversarial strings through the parser, the metrics and every reward.

A seeded generator (reproducible, no flakiness) builds random unicode, tag soup from every tag of
every tag set, deep nesting, mutated well-formed completions and a few 100k-character strings.
Nothing may raise on model output, and every value must be finite and in its documented range.
A small derandomised hypothesis test adds shrinking for whatever the generator misses.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssrl_trl.formats import r1_searcher_format_valid, search_r1_format_valid, ssrl_format_score
from ssrl_trl.protocol import MAX_QUERY_CHARS, TAG_SETS, extract_answer, find_spans, parse_action
from ssrl_trl.rewards import (
    FormatReward,
    LengthGuardReward,
    R1SearcherStage1Reward,
    R1SearcherStage2Reward,
    SearchCountReward,
    SearchR1EMReward,
    SearchR1FormatReward,
    SSRLReward,
)
from ssrl_trl.scoring import cover_em, em, f1, normalize_answer

SEED = 20250901
N_STRINGS = 10_000
BATCH = 50

TAG_SET_LIST = list(TAG_SETS.values())
ALL_TAGS = sorted(
    {
        tag
        for ts in TAG_SET_LIST
        for pair in (ts.search, ts.information, ts.answer, ts.think)
        if pair is not None
        for tag in pair
    }
)
ALL_PAIRS = sorted(
    {
        pair
        for ts in TAG_SET_LIST
        for pair in (ts.search, ts.information, ts.answer, ts.think)
        if pair is not None
    }
)
# Fragments that look like tags but are not, and text a model plausibly writes.
FRAGMENTS = [
    "<",
    ">",
    "</",
    "<|",
    "|>",
    "<answer",
    "answer>",
    "</ans",
    "<search >",
    "< search>",
    "<SEARCH>",
    "<|begin_of_",
    "query|>",
    "<think/>",
    "<<answer>>",
]
WORDS = [
    "Paris",
    "the",
    "a",
    "yes",
    "no",
    "noanswer",
    "query",
    "...",
    "Who wrote Dune?",
    "北京",
    "Beyoncé",
    "🚀",
    "0",
]
SPACES = [" ", "\n", "\t", "\r\n", "\u00a0", "\u200b", "\u3000", ""]

# Documented ranges (see ssrl_trl.rewards).
REWARDS = [
    (SSRLReward(), lambda v: 0.0 <= v <= 1.0),
    (SearchR1EMReward(), lambda v: v in (0.0, 1.0)),
    (SearchR1FormatReward(), lambda v: v in (0.0, 0.1, 0.2, 0.8, 1.0)),
    (R1SearcherStage1Reward(), lambda v: 0.0 <= v <= 1.5),
    (R1SearcherStage2Reward(), lambda v: 0.0 <= v <= 1.0 or v == -2.0),
    (FormatReward(tags="ssrl"), lambda v: 0.0 <= v <= 1.0),
    (FormatReward(tags="search_r1"), lambda v: v in (0.0, 1.0)),
    (FormatReward(tags="r1_searcher"), lambda v: v in (0.0, 1.0)),
    (SearchCountReward(), lambda v: v in (0.1, -0.1)),
    (LengthGuardReward(), lambda v: v in (0.0, -0.5)),
]


# ---------------------------------------------------------------------------------------------
# The generator


def _random_unicode(rng: random.Random, n: int) -> str:
    """Any code point, lone surrogates and NUL included, biased towards awkward ranges."""
    ranges = [(0, 0x80), (0x80, 0x800), (0x300, 0x370), (0x590, 0x700), (0x2000, 0x2070), (0x4E00, 0x9FFF)]
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            out.append(chr(rng.randrange(0x110000)))
        else:
            lo, hi = rng.choice(ranges)
            out.append(chr(rng.randrange(lo, hi)))
    return "".join(out)


def _tag_soup(rng: random.Random, n: int) -> str:
    pieces = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            pieces.append(rng.choice(ALL_TAGS))
        elif r < 0.55:
            pieces.append(rng.choice(FRAGMENTS))
        elif r < 0.85:
            pieces.append(rng.choice(WORDS))
        elif r < 0.95:
            pieces.append(rng.choice(SPACES))
        else:
            pieces.append(_random_unicode(rng, rng.randrange(1, 8)))
    return "".join(pieces)


def _nested(rng: random.Random) -> str:
    opening, closing = rng.choice(ALL_PAIRS)
    depth = rng.randrange(1, 400)
    inner = rng.choice(WORDS)
    closes = depth - rng.randrange(0, 3) if rng.random() < 0.5 else depth  # sometimes unbalanced
    return opening * depth + inner + closing * max(closes, 0)


def _well_formed(rng: random.Random) -> str:
    ts = rng.choice(TAG_SET_LIST)
    think = ts.think or ("", "")
    parts = [f"{think[0]}{rng.choice(WORDS)}{think[1]}"]
    for _ in range(rng.randrange(0, 4)):
        parts.append(f"{ts.search[0]}{rng.choice(WORDS)}{ts.search[1]}")
        parts.append(f"{ts.information[0]}{_tag_soup(rng, 3)}{ts.information[1]}")
        if rng.random() < 0.5:
            parts.append(f"{think[0]}{rng.choice(WORDS)}{think[1]}")
    parts.append(f"{ts.answer[0]}{rng.choice(WORDS)}{ts.answer[1]}")
    return rng.choice(SPACES).join(parts)


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randrange(1, 4)):
        if not text:
            break
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        op = rng.randrange(4)
        if op == 0:  # delete a slice (cuts tags in half)
            text = text[:i] + text[j:]
        elif op == 1:  # duplicate a slice
            text = text[:j] + text[i:j] + text[j:]
        elif op == 2:  # insert a tag anywhere
            text = text[:i] + rng.choice(ALL_TAGS) + text[i:]
        else:  # truncate (token budget)
            text = text[:i]
    return text


def _long(rng: random.Random, kind: int) -> str:
    size = 100_000
    if kind == 0:
        return _random_unicode(rng, size)
    if kind == 1:
        return (_tag_soup(rng, 40) * (size // 200 + 1))[:size]
    if kind == 2:
        return "</answer>" * (size // 9) + "<answer>x"
    if kind == 3:
        return "<search>" * (size // 8) + "</search>"
    if kind == 4:
        return "<think>" + "<search>q</search><information>i</information>" * (size // 47) + "</answer>"
    return "<think>t</think>" + "<|begin_of_query|>" * (size // 18) + "<answer>a</answer>"


def generate_strings(seed: int = SEED, n: int = N_STRINGS) -> list[str]:
    rng = random.Random(seed)
    strings = ["", " ", "\n", "\x00", "\ud800", "<answer>", "</answer>", "<answer></answer>"]
    strings += list(ALL_TAGS) + [_long(rng, k) for k in range(6)]
    makers = [
        lambda: _random_unicode(rng, rng.randrange(0, 200)),
        lambda: _tag_soup(rng, rng.randrange(0, 60)),
        lambda: _nested(rng),
        lambda: _well_formed(rng),
        lambda: _mutate(rng, _well_formed(rng)),
        lambda: _mutate(rng, _tag_soup(rng, 30)),
    ]
    while len(strings) < n:
        strings.append(rng.choice(makers)())
    return strings


STRINGS = generate_strings()


def test_generator_is_big_reproducible_and_adversarial():
    assert len(STRINGS) >= 10_000
    assert generate_strings()[-50:] == STRINGS[-50:]
    assert sum(len(s) >= 100_000 for s in STRINGS) >= 5
    assert all(any(tag in s for s in STRINGS) for tag in ALL_TAGS)
    # enough of them are parsable that the reward checks below exercise non-zero branches
    assert sum(extract_answer(s) is not None for s in STRINGS) > 1_000
    assert sum(search_r1_format_valid(s) for s in STRINGS) > 100


# ---------------------------------------------------------------------------------------------
# Parser and metrics


def _check_spans(text: str, pair: tuple[str, str]) -> None:
    opening, closing = pair
    for include_unclosed in (False, True):
        spans = find_spans(text, pair, include_unclosed=include_unclosed)
        last_end = 0
        for span in spans:
            assert last_end <= span.start < span.inner_start <= span.inner_end <= span.end <= len(text)
            assert text.startswith(opening, span.start)
            if span.closed:
                assert text.startswith(closing, span.inner_end) and span.end == span.inner_end + len(closing)
                assert closing not in span.content(text)
            else:
                assert include_unclosed and span is spans[-1] and span.end == len(text)
            last_end = span.end


def _check_text(text: str) -> None:
    for ts in TAG_SET_LIST:
        for pair in (ts.search, ts.information, ts.answer, ts.think):
            _check_spans(text, pair)

        answer = extract_answer(text, ts)
        if answer is not None:
            assert answer == answer.strip()
            assert ts.answer[1] not in answer
            assert ts.answer[0] in text and ts.answer[1] in text
        else:
            assert not find_spans(text, ts.answer)

        action = parse_action(text, ts)
        assert action.kind in ("search", "answer", "invalid")
        if action.kind == "invalid":
            assert action.error and action.content == ""
        else:
            assert not action.error
            closing = ts.search[1] if action.kind == "search" else ts.answer[1]
            assert 0 < action.end <= len(text) and text[: action.end].endswith(closing)
        if action.kind == "search":
            assert action.content and action.content == " ".join(action.content.split())
            assert len(action.content) <= MAX_QUERY_CHARS

        score = ssrl_format_score(text, ts)
        assert isinstance(score, float) and 0.0 <= score <= 1.0
        assert search_r1_format_valid(text, ts) in (True, False)
        assert r1_searcher_format_valid(text, ts) in (True, False)


def _check_metrics(prediction: str | None, golden) -> None:
    e, c, f = em(prediction, golden), cover_em(prediction, golden), f1(prediction, golden)
    assert e in (0.0, 1.0) and c in (0.0, 1.0)
    assert math.isfinite(f) and 0.0 <= f <= 1.0
    if e == 1.0:
        assert c == 1.0  # exact implies contained
        if normalize_answer(prediction):
            assert f == 1.0


@pytest.mark.parametrize("chunk", range(4), ids=lambda i: f"quarter-{i}")
def test_parser_never_raises_and_keeps_its_invariants(chunk):
    for text in STRINGS[chunk::4]:
        _check_text(text)


def test_metrics_never_raise_and_stay_in_range():
    rng = random.Random(SEED + 1)
    for text in STRINGS:
        short = text[:300]
        answer = extract_answer(text)
        _check_metrics(answer, short)
        _check_metrics(short, [answer or "", rng.choice(WORDS)])
        _check_metrics(answer, answer or "x")
        if answer is not None:
            assert em(answer, answer) == 1.0  # the own answer is always an exact match


# ---------------------------------------------------------------------------------------------
# Every reward


def _golden_for(rng: random.Random, text: str):
    answer = extract_answer(text[:5_000])
    choice = rng.randrange(6)
    if choice == 0 and answer is not None:
        return answer
    if choice == 1:
        return [rng.choice(WORDS), rng.choice(WORDS)]
    if choice == 2:
        return {"target": np.array([rng.choice(WORDS), answer or ""], dtype=object)}
    if choice == 3:
        return _random_unicode(rng, rng.randrange(0, 20))
    if choice == 4:
        return []
    return rng.choice(WORDS)


def _batches(rng: random.Random):
    for i in range(0, len(STRINGS), BATCH):
        texts = STRINGS[i : i + BATCH]
        completions = [t if rng.random() < 0.5 else [{"role": "assistant", "content": t}] for t in texts]
        yield texts, completions, [_golden_for(rng, t) for t in texts]


@pytest.mark.parametrize(
    ("reward", "in_range"),
    REWARDS,
    ids=[r.__name__ + (f"-{r.tags.name}" if isinstance(r, FormatReward) else "") for r, _ in REWARDS],
)
def test_every_reward_is_finite_and_in_range(reward, in_range):
    rng = random.Random(SEED + 2)
    logged: list[tuple[str, float]] = []
    n_scored = 0
    for texts, completions, golden in _batches(rng):
        prompts = ["Example: <answer> Beijing </answer>. Question?"] * len(texts)
        values = reward(
            prompts=prompts,
            completions=completions,
            golden_answers=golden,
            log_metric=lambda name, value: logged.append((name, value)),
        )
        assert len(values) == len(texts)
        for text, value in zip(texts, values, strict=True):
            assert isinstance(value, float) and math.isfinite(value), (reward.__name__, text[:200], value)
            assert in_range(value), (reward.__name__, text[:200], value)
        n_scored += len(values)
    assert n_scored == len(STRINGS)
    assert all(math.isfinite(v) for _, v in logged)
    assert all(name.startswith(reward.__name__ + "/") for name, _ in logged)


def test_em_rewards_hit_when_golden_is_the_completions_own_answer():
    """Guards against a fuzz run that only ever sees zeros: scoring a completion against its own
    extracted answer must give EM 1, whatever garbage surrounds it."""
    hits = 0
    for text in STRINGS:
        answer = extract_answer(text)
        if answer is None or len(text) > 5_000:
            continue
        assert SearchR1EMReward()(prompts=["q"], completions=[text], golden_answers=[answer]) == [1.0]
        assert SSRLReward()(prompts=["q"], completions=[text], golden_answers=[answer])[0] >= 0.9
        hits += 1
    assert hits > 1_000


# ---------------------------------------------------------------------------------------------
# Hypothesis: a fixed, derandomised budget with shrinking.

_tagged_text = st.lists(
    st.one_of(st.sampled_from(ALL_TAGS), st.sampled_from(FRAGMENTS + WORDS + SPACES), st.text(max_size=10)),
    max_size=40,
).map("".join)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_tagged_text, golden=st.one_of(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3)))
def test_hypothesis_tag_text(text, golden):
    _check_text(text)
    for reward, in_range in REWARDS:
        (value,) = reward(
            prompts=["q"], completions=[[{"role": "assistant", "content": text}]], golden_answers=[golden]
        )
        assert math.isfinite(value) and in_range(value), (reward.__name__, text, value)
