"""The transformers backend's own decoding loop: it must compute what ``model.generate`` computes,
whatever the batch, the padding, the shared prefill or the reused cache."""

from __future__ import annotations

import pytest
import torch

from ssrl_trl.rollout.backends import GenRequest, SamplingConfig
from ssrl_trl.rollout.hf_backend import HFBackend

GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(0).eval()


def _prompts(tokenizer):
    texts = ["hello there", "the capital of France is Paris " * 3, "who wrote Dune? " * 5, "x"]
    return [tokenizer.encode(t) for t in texts]


def _stock(model, tokenizer):
    return HFBackend(model, tokenizer, own_loop=False)  # model.generate: the reference


def _max_diff(a, b):
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def test_greedy_matches_model_generate(model, tokenizer):
    reqs = [GenRequest(p, 24, ("</search>",)) for p in _prompts(tokenizer)]
    ours = HFBackend(model, tokenizer).generate(reqs, GREEDY)
    ref = _stock(model, tokenizer).generate(reqs, GREEDY)
    for a, b in zip(ours, ref, strict=True):
        assert a.token_ids == b.token_ids
        assert a.finish_reason == b.finish_reason
        assert _max_diff(a.logprobs, b.logprobs) < 1e-4


def test_a_row_computes_the_same_alone_and_in_a_padded_batch(model, tokenizer):
    reqs = [GenRequest(p, 16) for p in _prompts(tokenizer)]
    batch = HFBackend(model, tokenizer).generate(reqs, GREEDY)
    for req, res in zip(reqs, batch, strict=True):
        alone = HFBackend(model, tokenizer).generate([req], GREEDY)[0]
        assert alone.token_ids == res.token_ids
        assert _max_diff(alone.logprobs, res.logprobs) < 1e-4


def test_next_turn_reuses_the_cache_and_matches_a_fresh_prefill(model, tokenizer):
    prompts = _prompts(tokenizer)
    backend = HFBackend(model, tokenizer)
    first = backend.generate([GenRequest(p, 12) for p in prompts], GREEDY)
    inserted = [tokenizer.encode(f" <information>doc {i} " * (i + 1) + "</information>") for i in range(4)]
    second = [GenRequest(p + r.token_ids + o, 10) for p, r, o in zip(prompts, first, inserted, strict=True)]
    before = backend.stats.reused_tokens
    reused = backend.generate(second, GREEDY)
    # Every row continued from its kept cache: only the inserted tokens (and one sampled token) were fed.
    assert backend.stats.reused_tokens - before == sum(
        len(p) + len(r.token_ids) - 1 for p, r in zip(prompts, first, strict=True)
    )
    fresh = HFBackend(model, tokenizer, reuse_cache=False).generate(second, GREEDY)
    for a, b in zip(reused, fresh, strict=True):
        assert a.token_ids == b.token_ids
        assert _max_diff(a.logprobs, b.logprobs) < 1e-4


def test_a_continuation_without_inserted_tokens_still_has_something_to_feed(model, tokenizer):
    prompt = _prompts(tokenizer)[1]
    backend = HFBackend(model, tokenizer)
    first = backend.generate([GenRequest(prompt, 5)], GREEDY)[0]
    assert first.finish_reason == "length"
    nxt = GenRequest(prompt + first.token_ids, 5)
    cont = backend.generate([nxt], GREEDY)[0]
    ref = HFBackend(model, tokenizer).generate([nxt], GREEDY)[0]
    assert cont.token_ids == ref.token_ids


def test_identical_prompts_and_the_shared_instructions_are_prefilled_once(model, tokenizer):
    head = tokenizer.encode("You answer questions by searching. Think first, then search, then answer. " * 2)
    questions = [tokenizer.encode(f" Question {i}: who wrote book {i}?") for i in range(3)]
    reqs = [GenRequest(head + q, 4) for q in questions for _ in range(4)]
    backend = HFBackend(model, tokenizer)
    torch.manual_seed(0)
    out = backend.generate(reqs, SamplingConfig(temperature=1.0))
    assert len(out) == 12
    # The shared prefix once (the head and the common " Question" tokens), then each question's
    # rest once: not 12 full prompts.
    prompts = [head + q for q in questions]
    common = 0
    while all(p[common] == prompts[0][common] for p in prompts):
        common += 1
    assert common >= len(head)
    assert backend.stats.prefilled_tokens == common + sum(len(p) - common for p in prompts)
    assert backend.stats.prompt_tokens == sum(len(r.prompt_ids) for r in reqs)


def test_sampled_logprobs_are_those_of_the_processed_distribution(model, tokenizer):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    sampling = SamplingConfig(temperature=0.7, top_p=0.9, top_k=50)
    prompts = _prompts(tokenizer)[:2]
    torch.manual_seed(3)
    out = HFBackend(model, tokenizer).generate(
        [GenRequest(p, 10) for p in prompts for _ in range(3)], sampling
    )
    for i, res in enumerate(out):
        prompt = prompts[i // 3]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + res.token_ids])).logits[0].float()
        for j, tok in enumerate(res.token_ids):
            scores = logits[len(prompt) - 1 + j][None]
            for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.9)):
                scores = warper(None, scores)
            expected = torch.log_softmax(scores, -1)[0, tok].item()
            assert abs(expected - res.logprobs[j]) < 1e-4


def test_sampling_is_reproducible_under_a_seed(model, tokenizer):
    reqs = [GenRequest(p, 12) for p in _prompts(tokenizer)]
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(
            [r.token_ids for r in HFBackend(model, tokenizer).generate(reqs, SamplingConfig(temperature=1.0))]
        )
    assert runs[0] == runs[1]


def test_budgets_stop_strings_and_eos_cut_each_row_on_its_own(model, tokenizer):
    prompts = _prompts(tokenizer)
    reqs = [GenRequest(prompts[0], 3), GenRequest(prompts[1], 7), GenRequest(prompts[2], 1)]
    out = HFBackend(model, tokenizer).generate(reqs, GREEDY)
    assert [len(r.token_ids) for r in out] == [3, 7, 1]
    assert all(r.finish_reason == "length" for r in out)
    assert all(len(r.logprobs) == len(r.token_ids) for r in out)


def test_repetition_penalty_matches_model_generate(model, tokenizer):
    sampling = SamplingConfig(temperature=0.0, repetition_penalty=1.3)
    reqs = [GenRequest(p, 12) for p in _prompts(tokenizer)]
    ours = HFBackend(model, tokenizer).generate(reqs, sampling)
    ref = _stock(model, tokenizer).generate(reqs, sampling)
    assert [r.token_ids for r in ours] == [r.token_ids for r in ref]


def test_sliding_window_models_fall_back_to_model_generate(tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, sliding_window=16,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    backend = HFBackend(MistralForCausalLM(config).eval(), tokenizer)
    assert not backend._own_loop
    out = backend.generate([GenRequest(tokenizer.encode("hello"), 4)], GREEDY)
    assert len(out[0].token_ids) == 4


def test_bad_arguments_are_refused(model, tokenizer):
    with pytest.raises(ValueError, match="batch_size"):
        HFBackend(model, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="ignore_eos"):
        HFBackend(model, tokenizer).generate([GenRequest([1, 2], 2)], SamplingConfig(ignore_eos=True))
    with pytest.raises(ValueError, match="at least one prompt token"):
        HFBackend(model, tokenizer).generate([GenRequest([], 2)], GREEDY)
