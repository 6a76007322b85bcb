"""The rollout engine on a real BPE tokenizer with scripted model output.

Properties checked on every trajectory: equal lengths of ids / mask / log-probs; every inserted
token masked; every sampled token outside an information block unmasked (self-search); the
segments decode, in order, to the whole trajectory; budgets are never exceeded.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssrl_trl.detok import token_texts
from ssrl_trl.environments import RetrievalEnv, SelfSearchEnv
from ssrl_trl.environments.retrieval import RetrieverUnavailable
from ssrl_trl.protocol import R1_SEARCHER, SEARCH_R1, SSRL, find_spans
from ssrl_trl.retrieval.base import Doc, RetrieverError
from ssrl_trl.rollout import Budgets, RolloutEngine, ScriptedBackend


class EchoRetriever:
    """Deterministic in-test retriever: k docs that quote the query (so inserted text is known)."""

    def __init__(self, fail: bool = False, exc: type[Exception] = RetrieverError):
        self.calls: list[list[str]] = []
        self.fail, self.exc = fail, exc

    def search(self, queries, k):
        self.calls.append(list(queries))
        if self.fail:
            raise self.exc("simulated timeout")
        return [[Doc(f"{q}-{i}", f'"T{i}"\nPassage {i} about {q}.') for i in range(k)] for q in queries]


def _check_contract(traj, tokenizer, budget):
    n = len(traj.completion_ids)
    assert n == len(traj.env_mask) == len(traj.logprobs)
    assert n <= budget
    for seg in traj.segments:
        if seg.kind != "model":
            assert traj.env_mask[seg.start : seg.end] == [0] * (seg.end - seg.start)
            assert traj.logprobs[seg.start : seg.end] == [0.0] * (seg.end - seg.start)
    # Decoding the segments (sampled and inserted tokens) in order reproduces the trajectory.
    whole = tokenizer.decode(traj.completion_ids, skip_special_tokens=False)
    pieces = "".join(
        tokenizer.decode(traj.completion_ids[s.start : s.end], skip_special_tokens=False)
        for s in traj.segments
    )
    assert pieces == whole


def _engine(tokenizer, env, texts, **budget):
    script = texts if callable(texts) else (lambda _p, i: texts[i % len(texts)])
    return RolloutEngine(ScriptedBackend(tokenizer, script), env, tokenizer, Budgets(**budget))


def test_search_r1_episode_inserts_masked_documents(tokenizer):
    retriever = EchoRetriever()
    env = RetrievalEnv(retriever, tokenizer, SEARCH_R1, topk=2)
    turns = [
        "<think>need a fact</think><search>capital of\nFrance</search>IGNORED",
        "<answer>Paris</answer> junk",
    ]
    traj = _engine(tokenizer, env, turns, max_completion_tokens=400).run([[1, 2, 3]])[0][0]
    _check_contract(traj, tokenizer, 400)
    assert [s.kind for s in traj.segments] == ["model", "observation", "model", "eos"]
    assert traj.stop_reason == "answer" and traj.answer == "Paris"
    assert traj.queries == ["capital of France"] and retriever.calls == [["capital of France"]]
    assert traj.doc_ids == [["capital of France-0", "capital of France-1"]]
    obs = traj.segments[1]
    text = tokenizer.decode(traj.completion_ids[obs.start : obs.end])
    assert text == (
        '\n\n<information>Doc 1(Title: "T0") Passage 0 about capital of France.\n'
        'Doc 2(Title: "T1") Passage 1 about capital of France.</information>\n\n'
    )
    # The model's first turn stops right after </search>: "IGNORED" was never generated.
    first = tokenizer.decode(traj.completion_ids[: traj.segments[0].end])
    assert first.endswith("</search>")


def test_r1_searcher_tags_and_document_format(tokenizer):
    env = RetrievalEnv(EchoRetriever(), tokenizer, R1_SEARCHER, topk=1)
    turns = [
        "<think>look up <|begin_of_query|>river in Paris<|end_of_query|>",
        " so</think><answer>Seine</answer>",
    ]
    traj = _engine(tokenizer, env, turns, max_completion_tokens=300).run([[7]])[0][0]
    _check_contract(traj, tokenizer, 300)
    obs = traj.segments[1]
    text = tokenizer.decode(traj.completion_ids[obs.start : obs.end])
    assert text.startswith("\n<|begin_of_documents|>\n(1) T0\nPassage 0 about river in Paris.")
    assert text.endswith("<|end_of_documents|>\n")
    assert traj.answer == "Seine"


def test_observation_is_cut_inside_documents_never_the_tags(tokenizer):
    env = RetrievalEnv(EchoRetriever(), tokenizer, topk=3)
    turns = ["<search>a very long query " + "word " * 50 + "</search>", "<answer>x</answer>"]
    traj = _engine(tokenizer, env, turns, max_obs_tokens=20, max_completion_tokens=400).run([[1]])[0][0]
    obs = traj.segments[1]
    assert obs.end - obs.start == 20
    text = tokenizer.decode(traj.completion_ids[obs.start : obs.end])
    assert text.startswith("\n\n<information>") and text.endswith("</information>\n\n")


def test_invalid_turn_gets_a_masked_correction(tokenizer):
    env = RetrievalEnv(EchoRetriever(), tokenizer)
    turns = ["I will just talk." + tokenizer.eos_token, "<answer>ok</answer>"]
    traj = _engine(tokenizer, env, turns, max_completion_tokens=300).run([[1]])[0][0]
    _check_contract(traj, tokenizer, 300)
    assert [s.kind for s in traj.segments] == ["model", "correction", "model", "eos"]
    assert traj.invalid_actions == 1 and traj.num_searches == 0
    correction = tokenizer.decode(traj.completion_ids[traj.segments[1].start : traj.segments[1].end])
    assert "search tags" in correction and "answer tags" in correction
    # No literal tags: the rewards must not find an answer or a format block in the environment's words.
    for tag in ("<search>", "</search>", "<answer>", "</answer>", "<information>"):
        assert tag not in correction


def test_empty_query_is_invalid_not_searched(tokenizer):
    retriever = EchoRetriever()
    env = RetrievalEnv(retriever, tokenizer)
    traj = _engine(
        tokenizer, env, ["<search>   </search>", "<answer>x</answer>"], max_completion_tokens=300
    ).run([[1]])[0][0]
    assert retriever.calls == [] and traj.invalid_actions == 1 and traj.segments[1].kind == "correction"


def test_retriever_failure_is_a_masked_error_observation(tokenizer):
    env = RetrievalEnv(EchoRetriever(fail=True), tokenizer)
    traj = _engine(
        tokenizer, env, ["<search>q</search>", "<answer>x</answer>"], max_completion_tokens=300
    ).run([[1]])[0][0]
    _check_contract(traj, tokenizer, 300)
    assert traj.retriever_errors == 1 and traj.segments[1].kind == "error"
    assert traj.stop_reason == "answer"  # the episode went on
    assert "Search failed" in tokenizer.decode(
        traj.completion_ids[traj.segments[1].start : traj.segments[1].end]
    )


def test_a_retriever_that_keeps_failing_stops_the_run_with_a_clear_message(tokenizer):
    env = RetrievalEnv(EchoRetriever(fail=True), tokenizer, max_consecutive_failures=2)
    engine = _engine(tokenizer, env, ["<search>q</search>"], max_turns=5, max_completion_tokens=2000)
    with pytest.raises(RetrieverUnavailable, match="failed 2 times in a row"):
        engine.run([[1]])


def test_a_bug_in_the_retriever_is_not_swallowed(tokenizer):
    env = RetrievalEnv(EchoRetriever(fail=True, exc=KeyError), tokenizer)
    with pytest.raises(KeyError):
        _engine(tokenizer, env, ["<search>q</search>"], max_completion_tokens=300).run([[1]])


def test_the_last_turn_also_stops_at_a_search_and_then_ends_without_an_answer(tokenizer):
    env = RetrievalEnv(EchoRetriever(), tokenizer)
    seen_stops = []
    backend = ScriptedBackend(tokenizer, lambda _p, i: "<search>again</search> more text")
    original = backend.generate

    def spy(requests, sampling):
        seen_stops.extend(r.stop for r in requests)
        return original(requests, sampling)

    backend.generate = spy
    traj = RolloutEngine(backend, env, tokenizer, Budgets(max_turns=3, max_completion_tokens=1000)).run(
        [[1]]
    )[0][0]
    # Two searches were answered; the third turn searched too, and no reply can come after it.
    assert traj.stop_reason == "no_answer" and traj.num_searches == 2 and traj.answer is None
    assert all("</search>" in stops for stops in seen_stops) and len(seen_stops) == 3
    assert traj.completion_ids[-1] != tokenizer.eos_token_id


def test_total_budget_is_never_exceeded_and_leaves_room_to_answer(tokenizer):
    env = RetrievalEnv(EchoRetriever(), tokenizer, topk=3)
    budget = 120
    traj = _engine(
        tokenizer,
        env,
        ["<search>q</search>"],
        max_turns=50,
        max_completion_tokens=budget,
        answer_reserve_tokens=16,
    ).run([[1]])[0][0]
    _check_contract(traj, tokenizer, budget)
    assert traj.stop_reason == "max_completion_tokens"
    last_obs = [s for s in traj.segments if s.kind == "observation"][-1]
    assert budget - last_obs.end >= 16


def test_self_search_masks_exactly_the_self_written_information(tokenizer):
    text = (
        "<think>first</think><search>who wrote Hamlet</search>"
        "<information>Hamlet is a tragedy\nwritten by William Shakespeare.</information>"
        "<think>so</think><answer>Shakespeare</answer>"
    )
    env = SelfSearchEnv(SSRL, mask_tags=True)
    traj = _engine(
        tokenizer, env, [text], max_turns=1, max_tokens_per_turn=400, max_completion_tokens=400
    ).run([[1]])[0][0]
    _check_contract(traj, tokenizer, 400)
    model = traj.segments[0]
    masked = [t for t, m in zip(traj.completion_ids[: model.end], traj.env_mask, strict=False) if m == 0]
    kept = [t for t, m in zip(traj.completion_ids[: model.end], traj.env_mask, strict=False) if m == 1]
    masked_text, kept_text = tokenizer.decode(masked), tokenizer.decode(kept)
    assert "Hamlet is a tragedy\nwritten by William Shakespeare." in masked_text
    assert "information" not in kept_text.replace("</search", "")
    assert "<answer>Shakespeare</answer>" in kept_text and "who wrote Hamlet" in kept_text
    assert traj.logprobs[: model.end] == [-1.0] * model.end  # real log-probs kept under the mask
    assert traj.num_searches == 1 and traj.queries == ["who wrote Hamlet"]


def test_self_search_can_keep_tags_in_the_loss(tokenizer):
    text = "<search>q</search>\n<information> fact </information>\n<answer>a</answer>"
    env = SelfSearchEnv(SSRL, mask_tags=False)
    traj = _engine(
        tokenizer, env, [text], max_turns=1, max_tokens_per_turn=100, max_completion_tokens=100
    ).run([[1]])[0][0]
    kept = tokenizer.decode([t for t, m in zip(traj.completion_ids, traj.env_mask, strict=True) if m])
    # Tag tokens stay in the loss; a token that straddles content and tag (" </") holds content: masked.
    assert "<information>" in kept and "information>\n<answer>" in kept and "fact" not in kept


def test_self_search_masks_an_unclosed_block_cut_by_the_budget(tokenizer):
    text = "<search>q</search><information>" + "recalled words " * 40
    env = SelfSearchEnv(SSRL)
    traj = _engine(tokenizer, env, [text], max_turns=1, max_tokens_per_turn=30, max_completion_tokens=30).run(
        [[1]]
    )[0][0]
    assert traj.stop_reason == "max_completion_tokens" and traj.truncated
    texts = token_texts(tokenizer, traj.completion_ids)
    start = texts.text.index("<information>")
    for (s, _e), m in zip(texts.offsets, traj.env_mask, strict=True):
        if s >= start:
            assert m == 0


def test_episodes_advance_independently_in_shared_backend_calls(tokenizer):
    """A finished episode leaves the batch; one still searching keeps going in the same calls."""
    env = RetrievalEnv(EchoRetriever(), tokenizer)
    sizes = []
    scripts = {
        0: ["<answer>fast</answer>"],
        1: ["<search>a</search>", "<search>b</search>", "<answer>slow</answer>"],
    }
    counters = {0: 0, 1: 0}

    def script(prompt_ids, _i):
        which = prompt_ids[0]
        text = scripts[which][counters[which]]
        counters[which] += 1
        return text

    backend = ScriptedBackend(tokenizer, script)
    original = backend.generate
    backend.generate = lambda reqs, s: sizes.append(len(reqs)) or original(reqs, s)
    trajs, stats = RolloutEngine(backend, env, tokenizer, Budgets(max_completion_tokens=500)).run([[0], [1]])
    assert [t.answer for t in trajs] == ["fast", "slow"]
    assert sizes == [2, 1, 1] and stats.backend_calls == 3 and trajs[1].num_searches == 2


FRAGMENTS = [
    "<think>", "</think>", "<search>", "</search>", "<information>", "</information>", "<answer>", "</answer>",
    "><", "who", " is", "\n", "  ", "é", "日本", "🎉", "Doc 1", "<", ">", "/", "info", "answer", "x" * 7,
]  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=40), min_size=1, max_size=4),
    st.booleans(),
    st.integers(20, 300),
)
def test_random_tag_soup_keeps_the_contract(tokenizer, turn_fragments, self_search, budget):
    turns = ["".join(f) for f in turn_fragments]
    mask_tags = bool(budget % 2)
    if self_search:
        env = SelfSearchEnv(SSRL, mask_tags=mask_tags)
    else:
        env = RetrievalEnv(EchoRetriever(), tokenizer, topk=2)
    engine = _engine(tokenizer, env, turns, max_turns=4, max_tokens_per_turn=60, max_completion_tokens=budget)
    traj = engine.run([[1, 2]])[0][0]
    _check_contract(traj, tokenizer, budget)
    if self_search:
        # The oracle works on bytes: a token is masked iff it contributes bytes to a block (its
        # content, or the whole block with mask_tags), whatever its own text decodes to.
        from test_self_search_mask import _token_bytes

        text = token_texts(tokenizer, traj.completion_ids).text
        inside = find_spans(text, SSRL.information, include_unclosed=True)
        bounds = [(sp.start, sp.end) if mask_tags else (sp.inner_start, sp.inner_end) for sp in inside]
        byte_bounds = [(len(text[:lo].encode()), len(text[:hi].encode())) for lo, hi in bounds if hi > lo]
        pos = 0
        for b, m, tok_id in zip(
            _token_bytes(tokenizer, traj.completion_ids), traj.env_mask, traj.completion_ids, strict=True
        ):
            start, pos = pos, pos + len(b)
            if tok_id == tokenizer.eos_token_id:
                continue
            overlaps = any(start < hi and pos > lo for lo, hi in byte_bounds)
            assert m == (0 if overlaps else 1), (text, start, pos)


def test_seeded_random_token_streams_keep_the_contract(tokenizer):
    """Raw random token ids (not text), including special tokens, through both environments."""
    rng = random.Random(0)
    vocab = len(tokenizer)
    for trial in range(30):
        streams = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 80))] for _ in range(4)]

        def script(_p, i, streams=streams):
            return tokenizer.decode(streams[i % len(streams)])

        env = SelfSearchEnv() if trial % 2 else RetrievalEnv(EchoRetriever(), tokenizer)
        traj = _engine(
            tokenizer, env, script, max_turns=3, max_tokens_per_turn=64, max_completion_tokens=150
        ).run([[1]])[0][0]
        _check_contract(traj, tokenizer, 150)


def test_response_prefix_is_inserted_masked_and_seen_by_the_parser(tokenizer):
    env = SelfSearchEnv(SSRL)
    backend = ScriptedBackend(tokenizer, lambda _p, _i: "x</think><answer>Paris</answer>")
    engine = RolloutEngine(
        backend, env, tokenizer, Budgets(max_turns=1, max_completion_tokens=64), response_prefix="<think>"
    )
    traj = engine.run([[1]])[0][0]
    _check_contract(traj, tokenizer, 64)
    assert (
        traj.segments[0].kind == "prefix"
        and traj.env_mask[: traj.segments[0].end] == [0] * traj.segments[0].end
    )
    assert tokenizer.decode(traj.completion_ids).startswith("<think>x</think><answer>Paris</answer>")
    assert traj.answer == "Paris"
