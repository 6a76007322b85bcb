"""Generation backends: who produces the model's tokens.

A backend turns a batch of token-id prompts into sampled token ids with their log-probs,
stopping at stop strings, EOS or a token budget. Requests are independent (each carries its own
stop strings and budget), so the engine can mix episodes at different turns in one call and a
continuous-batching backend (vLLM) can serve them as they arrive.

* :class:`~.hf_backend.HFBackend` — ``transformers`` (CPU, tests, DeepSpeed ZeRO-3 when the
  caller wraps it in TRL's ``unwrap_model_for_generation``);
* :mod:`.vllm_backend` / :mod:`.vllm_server` — vLLM's engine or an OpenAI-compatible server;
* :class:`ScriptedBackend` — replays scripted model text, for tests and debugging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..detok import token_texts

__all__ = [
    "Backend",
    "GenRequest",
    "GenResult",
    "SamplingConfig",
    "ScriptedBackend",
    "cut_generation",
    "resolve_eos_ids",
    "vllm_sampling_fields",
]

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """Per-call sampling settings, with vLLM/OpenAI names. ``temperature=0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    #: Generate through EOS (throughput benchmarks, equal token counts); vLLM backends only.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...] = ()


@dataclass
class GenResult:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    #: Decoded text of ``token_ids`` (the engine parses it; it never re-encodes it).
    text: str = ""


def vllm_sampling_fields(request: GenRequest, sampling: SamplingConfig) -> dict[str, Any]:
    """One turn's vLLM sampling settings, by vLLM's names: the one mapping, used both for the
    engine's ``SamplingParams`` and for the OpenAI server's ``/v1/completions`` body.

    Stop strings are kept in the output (a closing ``</search>`` stays in the trajectory), special
    tokens are not skipped (ids and text stay aligned), and the sampled token's log-prob comes back
    (``logprobs=0``). No top-k filter (``top_k=0`` here, as in TRL) is sent as ``-1``, which every
    vLLM version reads as "disabled" (before 0.9, ``0`` was refused).
    """
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "ignore_eos": sampling.ignore_eos,
        "logprobs": 0,
    }


class Backend(Protocol):
    """Batched generation. A backend that also has ``async agenerate(request, sampling)`` (vLLM
    engine, vLLM server) lets the engine advance every episode independently."""

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]: ...


def resolve_eos_ids(tokenizer: Any, eos_token_ids: Sequence[int] | None = None) -> list[int]:
    """The token ids that end a generation: the given ones, else the tokenizer's EOS (if any)."""
    eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
    return [e for e in eos if e is not None]


def cut_generation(
    tokenizer: Any,
    token_ids: list[int],
    logprobs: list[float],
    *,
    stop: Sequence[str],
    max_tokens: int,
    eos_token_ids: Sequence[int],
) -> GenResult:
    """Cut raw generated tokens at the first EOS, the token completing the first stop string, or
    ``max_tokens``, whichever comes first. The stop string's token is kept (so ``</search>`` stays
    in the trajectory) and so is EOS (TRL then sees the completion as terminated)."""
    token_ids, logprobs = list(token_ids[:max_tokens]), list(logprobs[:max_tokens])
    end, reason = len(token_ids), "length"
    eos = set(eos_token_ids)
    for i, tok in enumerate(token_ids):
        if tok in eos:
            end, reason = i + 1, "eos"
            break
    texts = token_texts(tokenizer, token_ids[:end])
    first_stop = min((p + len(s) for s in stop if (p := texts.text.find(s)) >= 0), default=-1)
    if first_stop >= 0:
        idx = texts.token_at_char(first_stop)
        if 0 <= idx < end and (idx + 1 < end or reason != "eos"):
            end, reason = idx + 1, "stop"
    text = "".join(texts.pieces[:end])
    return GenResult(token_ids[:end], logprobs[:end], reason, text=text)


class ScriptedBackend:
    """Plays scripted model text: ``script(prompt_ids, call_index) -> str``.

    The text is tokenised as if the model had sampled those tokens (each gets log-prob
    ``logprob``) and cut at stop strings / EOS / budget exactly like a real backend, so engine
    tests exercise the same boundary logic as a real run.
    """

    def __init__(self, tokenizer: Any, script: Callable[[list[int], int], str], *, logprob: float = -1.0):
        self.tokenizer, self.script, self.logprob = tokenizer, script, logprob
        self.calls = 0
        self.eos_token_ids = resolve_eos_ids(tokenizer)

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        out = []
        for req in requests:
            text = self.script(list(req.prompt_ids), self.calls)
            self.calls += 1
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(
                cut_generation(
                    self.tokenizer,
                    ids,
                    [self.logprob] * len(ids),
                    stop=req.stop,
                    max_tokens=req.max_tokens,
                    eos_token_ids=self.eos_token_ids,
                )
            )
        return out
