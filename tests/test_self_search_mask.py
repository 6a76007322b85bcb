"""Self-written information masks on bytes: with ``mask_tags: false`` exactly the tokens that
contribute bytes to a block's content leave the loss — also when the content starts or ends with
a multi-byte character (its leading byte tokens decode to nothing on their own) and when the
closing tag is split across two turns."""

from __future__ import annotations

import random

import pytest

from ssrl_trl.environments import SelfSearchEnv
from ssrl_trl.protocol import SSRL
from ssrl_trl.rollout import Budgets, RolloutEngine, ScriptedBackend

EDGE_CHARS = ["🙂", "東京", "e\u0301", "\u00e9", "ß", "x", " ", "¹", "\u200d🙂", "Ω"]


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), inverted."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _token_bytes(tokenizer, ids: list[int]) -> list[bytes]:
    """Exact bytes of each byte-level BPE token (a partial UTF-8 character included)."""
    decoder = _byte_alphabet()
    out = []
    for tok in tokenizer.convert_ids_to_tokens(ids):
        out.append(bytes(decoder[c] for c in tok) if all(c in decoder for c in tok) else tok.encode())
    return out


def _run(tokenizer, turns: list[str], mask_tags: bool):
    calls = iter(turns)
    backend = ScriptedBackend(tokenizer, lambda _p, _i: next(calls))
    lengths = [len(tokenizer.encode(t, add_special_tokens=False)) for t in turns]
    # Each turn is cut by its token budget ("length"), so the engine asks for the next one.
    engine = RolloutEngine(
        backend,
        SelfSearchEnv(SSRL, mask_tags=mask_tags),
        tokenizer,
        Budgets(max_turns=len(turns), max_tokens_per_turn=max(lengths), max_completion_tokens=4096),
    )
    return engine.run([[1, 2, 3]])[0][0]


def _content_mask(tokenizer, traj, text: str, lo_char: int, hi_char: int) -> list[int]:
    """Expected env_mask: 0 for every token whose bytes overlap the content's bytes."""
    lo, hi = len(text[:lo_char].encode()), len(text[:hi_char].encode())
    expected, pos = [], 0
    for i, b in enumerate(_token_bytes(tokenizer, traj.completion_ids)):
        start, end = pos, pos + len(b)
        pos = end
        expected.append(0 if (start < hi and end > lo) or not traj.is_model_token(i) else 1)
    return expected


@pytest.mark.parametrize("seed", range(40))
def test_content_tokens_are_masked_exactly_with_multibyte_edges_and_split_tags(tokenizer, seed):
    rng = random.Random(seed)
    head = "<think>recall</think><search>capital of Japan</search><information>"
    content = rng.choice(EDGE_CHARS) + " the capital is Tokyo " + rng.choice(EDGE_CHARS)
    tail = "</information><answer>Tokyo</answer>"
    text = head + content + tail
    # Split the trajectory into two turns inside the closing tag (or right at its edges).
    cut = len(head) + len(content) + rng.randint(0, len("</information>"))
    traj = _run(tokenizer, [text[:cut], text[cut:]], mask_tags=False)
    assert tokenizer.decode(traj.completion_ids, skip_special_tokens=True) == text
    expected = _content_mask(tokenizer, traj, text, len(head), len(head) + len(content))
    assert traj.env_mask == expected, (seed, content)
    assert traj.answer == "Tokyo" and traj.num_searches == 1


@pytest.mark.parametrize("seed", range(20))
def test_whole_blocks_are_masked_with_tags_when_split_across_turns(tokenizer, seed):
    rng = random.Random(100 + seed)
    head = "<think>t</think><search>q</search>"
    block = "<information>" + rng.choice(EDGE_CHARS) + "fact" + rng.choice(EDGE_CHARS) + "</information>"
    text = head + block + "<answer>a</answer>"
    cut = len(head) + rng.randint(1, len(block) - 1)
    traj = _run(tokenizer, [text[:cut], text[cut:]], mask_tags=True)
    expected = _content_mask(tokenizer, traj, text, len(head), len(head) + len(block))
    assert traj.env_mask == expected, (seed, cut)


def test_an_unclosed_block_is_masked_then_released_when_the_turn_goes_on(tokenizer):
    """A closing tag only half written at the end of turn 1 is masked as part of the open block;
    once turn 2 closes it, the tag's tokens (mask_tags: false) return to the loss."""
    head = "<think>t</think><search>q</search><information>fact"
    traj = _run(tokenizer, [head + "</inform", "ation><answer>a</answer>"], mask_tags=False)
    text = tokenizer.decode(traj.completion_ids, skip_special_tokens=True)
    lo = text.index("<information>") + len("<information>")
    expected = _content_mask(tokenizer, traj, text, lo, text.index("</information>"))
    assert traj.env_mask == expected
