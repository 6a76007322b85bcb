"""The language models behind the ``simulated`` retriever: who writes the documents.

Two generators with one method, ``generate(prompts, seed) -> list[Generation]``:

* :class:`TransformersSimulator` — a model loaded in this process with ``transformers`` (by
  default the recipe's own starting model: a separate, frozen copy that training never updates,
  so the "search engine" stays the same world while the policy learns);
* :class:`OpenAISimulator` — any OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted
  API) through ``POST /v1/chat/completions`` or ``POST /v1/completions``.

Why every failure is a value, not an exception: in training the simulator is "the world", and a
world that sometimes fails to answer must not stop the run. Each prompt's failure comes back as a
:class:`Generation` with ``error`` set; the retriever turns it into an error document, and only a
batch where *every* generation failed becomes a :class:`~ssrl_trl.retrieval.base.RetrieverError`
(a masked error observation that the environment counts, like a retrieval server that is down).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..http_retry import PicklableHTTPClient, RetriesExhausted, RetryPolicy, response_detail, send

__all__ = ["Generation", "OpenAISimulator", "Simulator", "TransformersSimulator", "openai_endpoint"]

logger = logging.getLogger(__name__)

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True)
class Generation:
    """One simulated document's text, or why it could not be written (``error``)."""

    text: str = ""
    error: str | None = None


class Simulator(Protocol):
    """Writes one text per prompt; never raises for a failed generation (see the module doc)."""

    def generate(self, prompts: list[str], seed: int) -> list[Generation]: ...


class TransformersSimulator:
    """A frozen causal LM in this process, loaded on first use.

    Loading is deferred so that building the retriever (at recipe assembly, or when a rollout
    function is pickled) costs nothing; a model that cannot be loaded is a configuration error and
    does raise. Calls are serialised by a lock: under the independent rollout schedule several
    episodes ask for documents from worker threads at once, and one model cannot generate two
    batches concurrently. Sampling (``temperature > 0``) runs under a forked RNG seeded from
    ``seed``, so documents are reproducible and the trainer's own random stream is untouched.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        chat_template: bool = True,
        batch_size: int = 16,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> None:
        self.model_name, self.device, self.dtype = model, device, dtype
        self.chat_template, self.batch_size = chat_template, batch_size
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        tokenizer.padding_side = "left"  # new tokens follow every prompt directly
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype).to(device).eval()
        model.requires_grad_(False)  # frozen: the simulated world never learns
        self._tokenizer, self._model = tokenizer, model

    def render(self, prompt: str) -> str:
        """The text the model continues: the prompt as a user turn of the chat template, when the
        tokenizer has one (an instruct model follows instructions only in its own format)."""
        tokenizer = self._tokenizer
        if self.chat_template and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    def generate(self, prompts: list[str], seed: int) -> list[Generation]:
        with self._lock:
            if self._model is None:
                self._load()
            out: list[Generation] = []
            for start in range(0, len(prompts), self.batch_size):
                batch = prompts[start : start + self.batch_size]
                try:
                    out.extend(Generation(t) for t in self._generate_batch(batch, seed + start))
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory: error documents
                    logger.warning("simulated search: generation failed: %s", exc)
                    out.extend(Generation(error=f"{type(exc).__name__}: {exc}"[:300]) for _ in batch)
            return out

    def _generate_batch(self, prompts: list[str], seed: int) -> list[str]:
        import torch

        tok, model = self._tokenizer, self._model
        texts = [self.render(p) for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sample = self.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": self.max_new_tokens}
        if sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:  # greedy: silence the sampling defaults a generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            ids = model.generate(**enc, pad_token_id=tok.pad_token_id, **kwargs)
        new = ids[:, enc["input_ids"].shape[1] :]
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    def __getstate__(self) -> dict[str, Any]:
        # a copy (e.g. a worker process) loads its own model instead of pickling the weights
        return {k: v for k, v in self.__dict__.items() if k not in ("_model", "_tokenizer", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._model = self._tokenizer = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersSimulator({self.model_name!r})"


def openai_endpoint(url: str, api: Literal["chat", "completions"]) -> str:
    """The endpoint for ``api`` under a server's base URL (``http://host:port`` or ``.../v1``)."""
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + _PATHS[api]


class OpenAISimulator(PicklableHTTPClient):
    """Documents from an OpenAI-compatible server, one request per document, ``concurrency`` in
    flight. Transient failures (connection errors, timeouts, 408/429/5xx) are retried with
    backoff (:mod:`ssrl_trl.http_retry`, the policy of the retrieval client); whatever still fails
    becomes that document's ``error``. The API key is read from the environment variable named
    ``api_key_env`` (never from the recipe, which is logged and committed)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api: Literal["chat", "completions"] = "chat",
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        concurrency: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> None:
        if api not in _PATHS:
            raise ValueError(f"unknown simulator api {api!r}; choose from {sorted(_PATHS)}")
        self.url, self.model, self.api = url, model, api
        self.endpoint = openai_endpoint(url, api)
        self.api_key_env = api_key_env
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(f"api_key_env names the environment variable {api_key_env!r}, which is not set")
        self.timeout, self.concurrency = timeout, concurrency
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.policy = RetryPolicy(retries, backoff, timeout=timeout)
        self._client = self._make_client()

    def _make_client(self) -> Any:
        import httpx

        headers = {}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return httpx.Client(timeout=httpx.Timeout(self.timeout), headers=headers)

    def payload(self, prompt: str, seed: int) -> dict[str, Any]:
        """The request body for one document (``seed`` makes a sampling server reproducible)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": seed,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def generate(self, prompts: list[str], seed: int) -> list[Generation]:
        if not prompts:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(self._one, prompts, [seed + i for i in range(len(prompts))]))

    def _one(self, prompt: str, seed: int) -> Generation:
        body = self.payload(prompt, seed)
        try:
            resp = send(self.policy, lambda: self._client.post(self.endpoint, json=body))
        except RetriesExhausted as exc:
            return Generation(error=f"{self.endpoint}: {exc.problem}"[:300])
        if resp.status_code >= 400:
            return Generation(
                error=f"{self.endpoint}: HTTP {resp.status_code}: {response_detail(resp)}"[:300]
            )
        try:
            return Generation(_choice_text(resp.json(), self.api).strip())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Generation(
                error=f"{self.endpoint}: malformed response ({type(exc).__name__}: {exc})"[:300]
            )

    def __repr__(self) -> str:
        return f"OpenAISimulator({self.endpoint!r}, model={self.model!r})"


def _choice_text(data: Any, api: str) -> str:
    """The first choice's text of a chat or completions response (``KeyError`` etc. if malformed)."""
    choice = data["choices"][0]
    text = choice["message"]["content"] if api == "chat" else choice["text"]
    if not isinstance(text, str):
        raise TypeError(f"expected text in the first choice, got {type(text).__name__}")
    return text
