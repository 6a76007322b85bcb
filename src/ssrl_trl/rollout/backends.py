"""Generation backends: who produces the model's tokens.

A backend turns a batch of token-id prompts into sampled token ids with their log-probs,
stopping at stop strings, EOS or a token budget. Requests are independent (each carries its own
stop strings and budget), so the engine can mix episodes at different turns in one call and a
continuous-batching backend (vLLM) can serve them as they arrive.

* :class:`HFBackend` — ``transformers`` ``generate`` (CPU, tests, DeepSpeed ZeRO-3 when the
  caller wraps it in TRL's ``unwrap_model_for_generation``).
* :class:`ScriptedBackend` — replays scripted model text, for tests and debugging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .detok import token_texts

__all__ = [
    "Backend",
    "GenRequest",
    "GenResult",
    "HFBackend",
    "SamplingConfig",
    "ScriptedBackend",
    "cut_generation",
    "resolve_eos_ids",
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
    extra: dict[str, Any] = field(default_factory=dict)


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


class HFBackend:
    """Batched ``model.generate`` with per-token log-probs of the processed (tempered, filtered)
    distribution, i.e. the probabilities the tokens were actually sampled from.

    Requests with the same stop strings share one ``generate`` call (left-padded); each result
    is then cut to its own budget. ``batch_size`` bounds memory.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, batch_size: int = 64, eos_token_ids: Sequence[int] | None = None
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos_token_ids = resolve_eos_ids(tokenizer, eos_token_ids)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(tuple(req.stop), []).append(i)
        for stop, indices in groups.items():
            for b in range(0, len(indices), self.batch_size):
                chunk = indices[b : b + self.batch_size]
                for i, res in zip(
                    chunk, self._generate_batch([requests[i] for i in chunk], stop, sampling), strict=True
                ):
                    results[i] = res
        return results  # type: ignore[return-value]

    def _generate_batch(self, reqs: list[GenRequest], stop: tuple[str, ...], sampling: SamplingConfig):
        import torch

        if sampling.ignore_eos:
            raise ValueError("ignore_eos is only supported by the vLLM backends")
        device = next(self.model.parameters()).device
        width = max(len(r.prompt_ids) for r in reqs)
        input_ids = torch.full((len(reqs), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(reqs), width), dtype=torch.long)
        for row, req in enumerate(reqs):
            input_ids[row, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            attention[row, width - len(req.prompt_ids) :] = 1
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.max_tokens for r in reqs),
            "do_sample": not greedy,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
            "output_scores": True,
            "return_dict_in_generate": True,
            "use_cache": True,
        }
        if not greedy:
            kwargs.update(
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None
            )
            if sampling.min_p:
                kwargs["min_p"] = sampling.min_p
        if sampling.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
            )
            logps = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, width:].tolist()
        logps = logps.float().cpu().tolist()
        return [
            cut_generation(
                self.tokenizer,
                ids,
                lp,
                stop=stop,
                max_tokens=req.max_tokens,
                eos_token_ids=self.eos_token_ids,
            )
            for ids, lp, req in zip(generated, logps, reqs, strict=True)
        ]


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
