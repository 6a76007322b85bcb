"""vLLM engine backend: the colocated engine TRL keeps in sync, or any offline ``vllm.LLM``.

Two ways to use it, both returning the sampled token ids (never re-tokenised text) with the
log-prob of each sampled token under the distribution it was drawn from (TRL builds its engine
with ``logprobs_mode="processed_logprobs"``, which is what importance-sampling correction needs):

* :meth:`VLLMBackend.generate` — one batched ``LLM.generate`` call (turn-synchronous engine loop,
  evaluation).
* :meth:`VLLMBackend.agenerate` — one request at a time, for the engine's independent-episode
  scheduler: requests are added to the engine as their episodes become ready and the engine is
  stepped (continuous batching) while other episodes wait on their retriever. No episode waits
  for the slowest one of its turn.

Prefix caching (on by default in vLLM v1, CPU included) makes a resumed turn prefill only the
inserted observation, not the whole history; TRL resets the cache after every weight sync.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from typing import Any

from .backends import (
    GenRequest,
    GenResult,
    SamplingConfig,
    cut_generation,
    resolve_eos_ids,
    vllm_sampling_fields,
)

__all__ = ["VLLMBackend", "build_llm", "vllm_sampling_params"]


def vllm_sampling_params(request: GenRequest, sampling: SamplingConfig) -> Any:
    """vLLM ``SamplingParams`` for one turn (fields: :func:`~.backends.vllm_sampling_fields`)."""
    from vllm import SamplingParams

    return SamplingParams(n=1, **vllm_sampling_fields(request, sampling))


def sampled_logprobs(completion: Any) -> list[float]:
    """The sampled token's log-prob at each position of a vLLM ``CompletionOutput``."""
    if completion.logprobs is None:
        raise RuntimeError("vLLM returned no log-probs; the request must set logprobs=0")
    out = []
    for tok, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        lp = entry[tok].logprob
        out.append(lp if not math.isnan(lp) else -math.inf)
    return out


class VLLMBackend:
    """Generates with a ``vllm.LLM`` (in-process engine; TRL's colocate ``trainer.vllm_generation.llm``).

    Each result goes through :func:`cut_generation`, the same boundary rule as every other
    backend (first EOS or stop string, budget), so the engine sees identical turn ends whichever
    backend produced them.
    """

    def __init__(self, llm: Any, tokenizer: Any, *, eos_token_ids: Sequence[int] | None = None) -> None:
        self.llm, self.tokenizer = llm, tokenizer
        self.eos_token_ids = resolve_eos_ids(tokenizer, eos_token_ids)
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future] = {}
        self._pump: asyncio.Task | None = None

    # -- batched --------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        if not requests:
            return []
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [vllm_sampling_params(r, sampling) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._result(out, req, sampling) for out, req in zip(outputs, requests, strict=True)]

    def _result(self, output: Any, request: GenRequest, sampling: SamplingConfig) -> GenResult:
        completion = output.outputs[0]
        return cut_generation(
            self.tokenizer,
            list(completion.token_ids),
            sampled_logprobs(completion),
            stop=request.stop,
            max_tokens=request.max_tokens,
            eos_token_ids=[] if sampling.ignore_eos else self.eos_token_ids,
        )

    # -- one request at a time (continuous batching) ----------------------------------------------
    async def agenerate(self, request: GenRequest, sampling: SamplingConfig) -> GenResult:
        from vllm.inputs import TokensPrompt

        loop = asyncio.get_running_loop()
        rid = f"ssrl-{next(self._ids)}"
        future: asyncio.Future = loop.create_future()
        self._waiting[rid] = future
        self.llm.llm_engine.add_request(
            rid,
            TokensPrompt(prompt_token_ids=list(request.prompt_ids)),
            vllm_sampling_params(request, sampling),
        )
        if self._pump is None or self._pump.done():
            self._pump = loop.create_task(self._step_engine())
        return self._result(await future, request, sampling)

    async def _step_engine(self) -> None:
        """Step the engine while any request is waiting, resolving each as it finishes. Yields to
        the event loop between steps so finished episodes can parse, search and resubmit."""
        engine = self.llm.llm_engine
        try:
            while self._waiting:
                for out in engine.step():
                    future = self._waiting.pop(out.request_id, None) if out.finished else None
                    if future is not None and not future.done():
                        future.set_result(out)
                await asyncio.sleep(0)
        except BaseException as exc:  # fail every waiter instead of leaving them hanging
            waiting, self._waiting = self._waiting, {}
            if waiting:
                engine.abort_request(list(waiting))
            for future in waiting.values():
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise


def build_llm(
    model: str,
    *,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    enable_prefix_caching: bool = True,
    seed: int = 0,
    trust_remote_code: bool = False,
    tokenizer: str | None = None,
) -> Any:
    """An offline ``vllm.LLM`` for evaluation and benchmarks, configured like TRL's colocate engine
    (processed log-probs). On the CPU build it gets a KV cache that fits next to other work."""
    import os

    from .vllm_compat import is_vllm_cpu

    cpu = is_vllm_cpu()
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM

    return LLM(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization or (0.3 if cpu else 0.9),
        max_model_len=max_model_len,
        enable_prefix_caching=enable_prefix_caching,
        logprobs_mode="processed_logprobs",
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
