"""Simulated search (ZeroSearch, Sun et al., 2025): a language model writes the documents.

Instead of looking a query up in an index, the ``simulated`` retriever asks a language model to
*write* ``k`` passages for it — the frozen starting policy in this process, another local model,
or any OpenAI-compatible server (:mod:`.simulators`). Why: it needs no corpus, index or search
API, and (ZeroSearch's point) the quality of what comes back can be controlled. Each passage is
written either as a *useful* document (one that answers the query) or as a *noisy* one (related
words, no answer, or misleading details); the share of noisy documents follows a curriculum over
training (``noise_start`` → ``noise_end`` over ``curriculum_steps``, linear or ZeroSearch's
exponential ramp), so the policy first learns the search format against a helpful world and then
learns to cope with a worse one.

It is a retriever like any other (``search(queries, k)``), registered as kind ``simulated``:
the retrieval environment inserts its documents, masks them, cuts them to the observation budget
and counts failures exactly as for BM25 or an HTTP server. Which documents are noisy is a pure
function of ``(seed, step, query, slot)`` — reproducible, independent of batching and of the
order in which episodes ask. The step comes from the training loop through
:meth:`SimulatedRetriever.set_training_progress` (``ssrl_trl.callbacks.TrainingProgressCallback``
calls it before every step); outside training (held-out evaluation, ``ssrl-trl eval``) no step is
set and every document is written as useful.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..api_keys import check_env_var_name
from .base import Doc, RetrieverError, check_k
from .factory import RetrieverOptions, register_retriever
from .simulators import Generation, OpenAISimulator, Simulator, TransformersSimulator

__all__ = [
    "NOISY_PROMPT",
    "USEFUL_PROMPT",
    "NoiseCurriculum",
    "SimulatedOptions",
    "SimulatedRetriever",
    "SimulatorPrompts",
    "build_simulated",
    "clean_document",
]

USEFUL_PROMPT = (
    "You are a web search engine. Write search result {n}, a short factual passage (two or three "
    "sentences, like an encyclopedia entry) that answers the query below with concrete names, "
    "dates and numbers. Write only the passage.\n\nQuery: {query}"
)
NOISY_PROMPT = (
    "You are a web search engine. Write search result {n}, a short passage (two or three sentences, "
    "like an encyclopedia entry) that uses some words of the query below but does NOT answer it: "
    "write about a related but different subject, or give details that are irrelevant or wrong. "
    "Write only the passage.\n\nQuery: {query}"
)

# Tags a simulator may copy from its training (a model simulating itself knows <search>, <answer>,
# <|begin_of_query|>): inside an inserted document they would read as actions or answers to the
# rewards and the parser, so they are removed. A real corpus has none.
_TAG = re.compile(r"<\|?/?[A-Za-z_][\w-]*\|?>")


def clean_document(text: str) -> str:
    """``text`` without tag-like markup, whitespace collapsed."""
    return " ".join(_TAG.sub(" ", text).split())


@dataclass(frozen=True)
class SimulatorPrompts:
    """The two instructions; ``{query}`` and ``{n}`` (the result's number, from 1) are replaced
    literally, so other braces in a custom prompt stay as written."""

    useful: str = USEFUL_PROMPT
    noisy: str = NOISY_PROMPT

    def render(self, query: str, noisy: bool, n: int) -> str:
        template = self.noisy if noisy else self.useful
        return template.replace("{n}", str(n)).replace("{query}", query.strip())


@dataclass(frozen=True)
class NoiseCurriculum:
    """The share of noisy documents over training, and which documents are noisy.

    ``ratio(step)`` moves from ``start`` to ``end`` over ``steps`` optimiser steps (the run's
    ``max_steps`` when ``steps`` is ``None``) and stays at ``end`` afterwards. ``shape``
    ``exponential`` is ZeroSearch's ``(base**(t) - 1) / (base - 1)`` in the fraction ``t`` of the
    way: slow at first, faster near the end.
    """

    start: float = 0.0
    end: float = 0.0
    steps: int | None = None
    shape: Literal["linear", "exponential"] = "linear"
    base: float = 4.0
    seed: int = 0

    def ratio(self, step: int | None, max_steps: int | None = None) -> float:
        """The noisy share at ``step`` (``None``: not training, so 0)."""
        if step is None:
            return 0.0
        span = self.steps or max_steps
        if not span or span <= 0:
            return self.start
        t = min(max(step / span, 0.0), 1.0)
        if self.shape == "exponential":
            t = (self.base**t - 1.0) / (self.base - 1.0)
        return self.start + (self.end - self.start) * t

    def is_noisy(self, ratio: float, step: int | None, query: str, slot: int) -> bool:
        """Whether result ``slot`` of ``query`` is noisy: a uniform draw from a hash of
        ``(seed, step, query, slot)`` below ``ratio``. A hash, not a random stream, so the answer
        does not depend on how many other queries were asked before or alongside it."""
        if ratio <= 0.0:
            return False
        if ratio >= 1.0:
            return True
        return _uniform(self.seed, step, query, slot) < ratio


def _uniform(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SimulatedRetriever:
    """``search(queries, k)``: ``k`` written documents per query (see the module docstring).

    A document whose generation failed is kept as an error document (id ``sim:error:...``) so
    the others still reach the policy; a call where every generation failed raises
    :class:`RetrieverError`, which the retrieval environment turns into a masked error
    observation. ``stats`` counts documents, noisy ones and failures since construction.
    """

    def __init__(
        self,
        simulator: Simulator,
        curriculum: NoiseCurriculum | None = None,
        prompts: SimulatorPrompts | None = None,
    ) -> None:
        self.simulator = simulator
        self.curriculum = curriculum or NoiseCurriculum()
        self.prompts = prompts or SimulatorPrompts()
        self.step: int | None = None
        self.max_steps: int | None = None
        self.stats = {"documents": 0, "noisy": 0, "failed": 0}
        self._stats_lock = threading.Lock()

    def set_training_progress(self, step: int | None, max_steps: int | None = None) -> None:
        """The optimiser step about to run (``None`` when training is over)."""
        self.step, self.max_steps = step, max_steps

    @property
    def noise_ratio(self) -> float:
        return self.curriculum.ratio(self.step, self.max_steps)

    def training_metrics(self) -> dict[str, float]:
        """Values worth logging with the run: the current noisy share."""
        return {"simulator/noise_ratio": self.noise_ratio}

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        check_k(k)
        step, ratio = self.step, self.noise_ratio
        jobs = [
            (query, slot, self.curriculum.is_noisy(ratio, step, query, slot))
            for query in queries
            for slot in range(k)
        ]
        if not jobs:
            return []
        prompts = [self.prompts.render(q, noisy, slot + 1) for q, slot, noisy in jobs]
        seed = int(_uniform(self.curriculum.seed, step, *queries) * 2**31)
        generations = self.simulator.generate(prompts, seed)
        if len(generations) != len(jobs):
            raise RetrieverError(f"the simulator wrote {len(generations)} documents for {len(jobs)} prompts")
        self._count(jobs, generations)
        if all(g.error is not None for g in generations):
            raise RetrieverError(
                f"the simulator failed for all {len(jobs)} documents: {generations[0].error}"
            )
        docs = [_document(q, slot, noisy, g) for (q, slot, noisy), g in zip(jobs, generations, strict=True)]
        return [docs[i * k : (i + 1) * k] for i in range(len(queries))]

    def _count(self, jobs: list[tuple[str, int, bool]], generations: list[Generation]) -> None:
        with self._stats_lock:
            self.stats["documents"] += len(jobs)
            self.stats["noisy"] += sum(noisy for _, _, noisy in jobs)
            self.stats["failed"] += sum(g.error is not None for g in generations)

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_stats_lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SimulatedRetriever({self.simulator!r}, noise={self.noise_ratio:.2f})"


def _document(query: str, slot: int, noisy: bool, generation: Generation) -> Doc:
    """A written passage as a :class:`Doc`: filed under the query as its title (a search result
    for that query, useful or not), with an id saying it was simulated and how."""
    key = hashlib.sha256(query.encode("utf-8")).hexdigest()[:8]
    title = clean_document(query)[:80].replace('"', "'")
    if generation.error is not None:
        text = f"(the simulated search engine could not write this result: {generation.error[:200]})"
        return Doc(f"sim:error:{key}:{slot + 1}", f'"{title}"\n{text}')
    label = "noisy" if noisy else "useful"
    return Doc(f"sim:{label}:{key}:{slot + 1}", f'"{title}"\n{clean_document(generation.text)}')


# -- the recipe's options ------------------------------------------------------------------------
class SimulatedOptions(RetrieverOptions):
    """``retriever: {kind: simulated, url: ..., options: {...}}``; see docs/methods/simulated_search.md."""

    backend: Literal["transformers", "openai"] = "transformers"
    model: str = Field(description="model path or hub id (transformers), or the served model's name (openai)")
    url: str | None = Field(None, validate_default=True, description="OpenAI-compatible server (openai)")
    api: Literal["chat", "completions"] = "chat"
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    concurrency: int = Field(8, ge=1, description="openai: requests in flight")
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: bool = True
    batch_size: int = Field(16, ge=1, description="transformers: documents per generate call")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="tokens per document")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    noise_start: float = Field(0.0, ge=0.0, le=1.0)
    noise_end: float = Field(0.0, ge=0.0, le=1.0)
    curriculum_steps: int | None = Field(None, ge=1, description="default: the run's max_steps")
    curriculum: Literal["linear", "exponential"] = "linear"
    curriculum_base: float = Field(4.0, gt=1.0)
    seed: int = 0
    useful_prompt: str = USEFUL_PROMPT
    noisy_prompt: str = NOISY_PROMPT

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None, info: ValidationInfo) -> str | None:
        backend = info.data.get("backend")
        if backend == "openai" and url is None:
            raise ValueError("backend 'openai' needs url (the server, e.g. http://127.0.0.1:8001)")
        if backend == "transformers" and url is not None:
            raise ValueError("url is only for backend 'openai'; the transformers backend loads `model`")
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"url must start with http:// or https:// and name a host, got {url!r}")
        return url

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        return check_env_var_name(name)

    @field_validator("useful_prompt", "noisy_prompt")
    @classmethod
    def _has_query(cls, template: str) -> str:
        if "{query}" not in template:
            raise ValueError("must contain {query}, where the search query goes")
        return template

    @field_validator("curriculum_base")
    @classmethod
    def _finite(cls, base: float) -> float:
        if not math.isfinite(base):
            raise ValueError("must be a finite number above 1")
        return base


def build_simulated(o: SimulatedOptions) -> SimulatedRetriever:
    """The retriever of validated options (the registry's builder)."""
    generation = {"max_new_tokens": o.max_new_tokens, "temperature": o.temperature, "top_p": o.top_p}
    simulator: Simulator
    if o.backend == "openai":
        simulator = OpenAISimulator(
            o.url or "",
            o.model,
            api=o.api,
            api_key_env=o.api_key_env,
            timeout=o.timeout,
            retries=o.retries,
            concurrency=o.concurrency,
            **generation,
        )
    else:
        simulator = TransformersSimulator(
            o.model,
            device=o.device,
            dtype=o.dtype,
            chat_template=o.chat_template,
            batch_size=o.batch_size,
            **generation,
        )
    curriculum = NoiseCurriculum(
        o.noise_start, o.noise_end, o.curriculum_steps, o.curriculum, o.curriculum_base, o.seed
    )
    return SimulatedRetriever(simulator, curriculum, SimulatorPrompts(o.useful_prompt, o.noisy_prompt))


register_retriever("simulated", SimulatedOptions, build_simulated)
