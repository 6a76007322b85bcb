"""Simulated search (ZeroSearch): a language model writes the documents a search returns.

Unit checks of the prompts, the noise curriculum and its determinism, the OpenAI-compatible
client against a fake server (errors included: they become error documents, never a crash), the
options' validation, and two GRPO steps of a tiny model through a recipe whose retriever is the
``simulated`` kind: documents written by a frozen tiny model, inserted fully masked, noisy from
the second step on because the curriculum learns the step from the training loop.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ssrl_trl.environments import RetrievalEnv
from ssrl_trl.protocol import SEARCH_R1
from ssrl_trl.recipe import RecipeError, load_recipe
from ssrl_trl.retrieval.base import RetrieverError
from ssrl_trl.retrieval.factory import RETRIEVER_REGISTRY, build_retriever
from ssrl_trl.retrieval.server import running_server
from ssrl_trl.retrieval.simulated import (
    USEFUL_PROMPT,
    NoiseCurriculum,
    SimulatedRetriever,
    SimulatorPrompts,
    clean_document,
)
from ssrl_trl.retrieval.simulators import Generation, OpenAISimulator, TransformersSimulator, openai_endpoint


class Recorder:
    """A simulator that writes ``<useful|noisy> doc about <query>`` and fails where told."""

    def __init__(self, fail: str | None = None) -> None:
        self.prompts: list[str] = []
        self.fail = fail

    def generate(self, prompts, seed):
        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            query = p.rsplit("Query: ", 1)[1]
            if self.fail is not None and self.fail in query:
                out.append(Generation(error="boom"))
            else:
                kind = "noisy" if "NOT answer" in p else "useful"
                out.append(Generation(f"{kind} doc about <answer>{query}</answer>"))
        return out


# -- prompts -------------------------------------------------------------------------------------
def test_prompts_put_the_query_and_number_in_the_useful_or_noisy_instruction():
    prompts = SimulatorPrompts()
    useful, noisy = prompts.render(" who wrote dune \n", False, 2), prompts.render("who wrote dune", True, 1)
    assert useful == USEFUL_PROMPT.replace("{n}", "2").replace("{query}", "who wrote dune")
    assert noisy.endswith("Query: who wrote dune") and "result 1" in noisy and "NOT answer" in noisy
    assert "NOT answer" not in useful and "answers the query" in useful
    custom = SimulatorPrompts("Doc {n} for {query} {json: {}}", "Junk {n}: {query}")
    assert custom.render("q", False, 3) == "Doc 3 for q {json: {}}"  # other braces kept as written
    assert custom.render("q", True, 1) == "Junk 1: q"


def test_the_transformers_simulator_speaks_the_chat_template(tokenizer):
    sim = TransformersSimulator("unused")
    sim._tokenizer = tokenizer
    text = sim.render("Query: dune")
    assert text.startswith("<|im_start|>") and "<|im_start|>user\nQuery: dune<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    sim.chat_template = False
    assert sim.render("Query: dune") == "Query: dune"


def test_documents_lose_tag_markup_a_simulator_copies_from_its_training():
    text = "Paris <answer>Paris</answer> <|begin_of_query|>x<|end_of_query|>\n\n<search>y</search> 3 < 4 > 2"
    assert clean_document(text) == "Paris Paris x y 3 < 4 > 2"


# -- the curriculum --------------------------------------------------------------------------------
def test_the_noise_share_follows_the_schedule():
    linear = NoiseCurriculum(0.1, 0.5, steps=4)
    assert [round(linear.ratio(s), 6) for s in (0, 1, 2, 4, 9)] == [0.1, 0.2, 0.3, 0.5, 0.5]
    assert linear.ratio(None) == 0.0  # not training: every document useful
    by_run = NoiseCurriculum(0.0, 1.0)  # no curriculum_steps: the run's max_steps
    assert by_run.ratio(5, max_steps=10) == 0.5 and by_run.ratio(5) == 0.0
    exp = NoiseCurriculum(0.0, 0.75, steps=10, shape="exponential", base=4.0)
    assert exp.ratio(0) == 0.0 and exp.ratio(10) == pytest.approx(0.75)
    assert exp.ratio(5) == pytest.approx(0.75 * (4**0.5 - 1) / 3)  # 0.25: slower than linear (0.375)
    falling = NoiseCurriculum(0.8, 0.2, steps=2)
    assert falling.ratio(1) == pytest.approx(0.5)


def test_which_documents_are_noisy_is_deterministic_given_the_seed():
    cur = NoiseCurriculum(seed=7)
    keys = [(step, f"query {q}", slot) for step in range(5) for q in range(40) for slot in range(5)]
    draws = [cur.is_noisy(0.3, *key) for key in keys]
    assert draws == [NoiseCurriculum(seed=7).is_noisy(0.3, *key) for key in keys]
    assert draws != [NoiseCurriculum(seed=8).is_noisy(0.3, *key) for key in keys]
    assert 0.25 < sum(draws) / len(draws) < 0.35  # 1000 draws at 0.3
    # monotone in the ratio: a document noisy at 0.3 stays noisy at 0.6
    assert all(cur.is_noisy(0.6, *key) for key, d in zip(keys, draws, strict=True) if d)
    assert not any(cur.is_noisy(0.0, *k) for k in keys) and all(cur.is_noisy(1.0, *k) for k in keys)


def test_the_retriever_asks_for_noisy_documents_as_training_progresses():
    sim = Recorder()
    retriever = SimulatedRetriever(sim, NoiseCurriculum(0.0, 1.0, steps=2, seed=3))
    docs = retriever.search(["capital of peru"], 3)[0]
    assert [d.id.split(":")[1] for d in docs] == ["useful"] * 3  # no step set: not training
    retriever.set_training_progress(1, 10)
    assert retriever.noise_ratio == 0.5 and retriever.training_metrics() == {"simulator/noise_ratio": 0.5}
    half = [d.id.split(":")[1] for qs in retriever.search([f"q{i}" for i in range(30)], 2) for d in qs]
    assert 15 < half.count("noisy") < 45  # about half of 60
    # the same step and queries, asked again or one at a time: the same documents are noisy
    again = [d.id.split(":")[1] for i in range(30) for d in retriever.search([f"q{i}"], 2)[0]]
    assert again == half
    retriever.set_training_progress(2, 10)
    docs = retriever.search(["capital of peru"], 2)[0]
    assert [d.id.split(":")[1] for d in docs] == ["noisy", "noisy"]
    assert docs[0].title == "capital of peru" and docs[0].text == "noisy doc about capital of peru"
    assert "NOT answer" in sim.prompts[-1] and sim.prompts[-1].endswith("Query: capital of peru")
    assert retriever.stats == {
        "documents": 3 + 60 + 60 + 2,
        "noisy": half.count("noisy") * 2 + 2,
        "failed": 0,
    }


def test_a_failed_generation_becomes_an_error_document_and_all_failed_a_masked_error(tokenizer):
    retriever = SimulatedRetriever(Recorder(fail="bad"))
    good, bad = retriever.search(["good query", "bad query"], 2)
    assert [d.id.split(":")[1] for d in good] == ["useful", "useful"]
    assert [d.id.split(":")[1] for d in bad] == ["error", "error"] and "boom" in bad[0].text
    assert retriever.stats["failed"] == 2
    with pytest.raises(RetrieverError, match="failed for all 2 documents: boom"):
        retriever.search(["bad"], 2)
    env = RetrievalEnv(retriever, tokenizer, SEARCH_R1, topk=1)
    obs = env.respond([SimpleNamespace(kind="search", content="bad one")], [64])[0]
    assert obs.kind == "error" and "Search failed" in obs.text and env.consecutive_failures == 1


# -- the OpenAI-compatible client against a fake server --------------------------------------------
def _fake_openai(seen: list[dict]) -> FastAPI:
    """Chat and completions; "slow" waits 2 s, "FAIL" is a 500, "FLAKY" a 503 the first time,
    "JUNK" an answer without choices; requests need the bearer key "sekret"."""
    app, flaky = FastAPI(), {"n": 0}

    async def answer(request: Request, text_of) -> JSONResponse:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("authorization")})
        if request.headers.get("authorization") != "Bearer sekret":
            return JSONResponse({"detail": "bad key"}, status_code=401)
        prompt = text_of(body)
        if "slow" in prompt:
            await asyncio.sleep(2.0)
        if "FAIL" in prompt:
            return JSONResponse({"detail": "simulator crashed"}, status_code=500)
        if "FLAKY" in prompt and flaky["n"] == 0:
            flaky["n"] += 1
            return JSONResponse({"detail": "busy"}, status_code=503)
        if "JUNK" in prompt:
            return JSONResponse({"object": "error"})
        query = prompt.rsplit("Query: ", 1)[-1]
        text = f" {'noise' if 'NOT answer' in prompt else 'fact'} on {query} (seed {body['seed']}) "
        return JSONResponse({"choices": [{"message": {"content": text}, "text": text}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, lambda b: b["messages"][-1]["content"])

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, lambda b: b["prompt"])

    return app


@pytest.fixture(scope="module")
def fake_server():
    seen: list[dict] = []
    with running_server(_fake_openai(seen)) as url:
        yield url, seen


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_the_openai_simulator_writes_documents_through_a_server(fake_server, monkeypatch, api):
    url, seen = fake_server
    seen.clear()
    monkeypatch.setenv("SIM_KEY", "sekret")
    retriever = build_retriever(
        "simulated", backend="openai", url=url + "/v1", model="sim-model", api=api, api_key_env="SIM_KEY",
        max_new_tokens=33, temperature=0.5, noise_start=1.0, noise_end=1.0, seed=5,
    )  # fmt: skip
    retriever.set_training_progress(0, 4)
    docs = retriever.search(["who built the tower"], 2)[0]
    assert [d.id.split(":")[1] for d in docs] == ["noisy", "noisy"]
    assert docs[0].text.startswith("noise on who built the tower (seed ")
    assert docs[0].text != docs[1].text  # one seed per document
    assert len(seen) == 2 and all(s["auth"] == "Bearer sekret" for s in seen)
    body = seen[0]["body"]
    assert body["model"] == "sim-model" and body["max_tokens"] == 33 and body["temperature"] == 0.5
    assert ("messages" in body) == (api == "chat") and ("prompt" in body) == (api == "completions")
    assert retriever.search(["who built the tower"], 2)[0] == docs  # same step, query, seed: same text


def test_server_errors_timeouts_and_junk_become_error_documents_not_a_crash(fake_server, monkeypatch):
    url, seen = fake_server
    monkeypatch.setenv("SIM_KEY", "sekret")
    sim = OpenAISimulator(url, "m", api_key_env="SIM_KEY", timeout=0.5, retries=1, backoff=0.0)
    out = sim.generate(["Query: fine", "Query: FAIL", "Query: slow", "Query: JUNK", "Query: FLAKY"], 0)
    assert out[0].error is None and out[0].text.startswith("fact on fine")
    assert "HTTP 500: simulator crashed" in out[1].error
    assert "timed out" in out[2].error
    assert "malformed response (KeyError" in out[3].error
    assert out[4].error is None and out[4].text.startswith("fact on FLAKY")  # a 503 is retried
    env = RetrievalEnv(SimulatedRetriever(sim), _tokenizer_stub(), SEARCH_R1, topk=1)
    replies = env.respond([SimpleNamespace(kind="search", content="FAIL")], [64])
    assert replies[0].kind == "error" and env.consecutive_failures == 1
    monkeypatch.setenv("SIM_KEY", "wrong")
    rejected = OpenAISimulator(url, "m", api_key_env="SIM_KEY", retries=0).generate(["Query: x"], 0)
    assert "HTTP 401: bad key" in rejected[0].error  # a 4xx is not retried


def _tokenizer_stub():
    """Characters as tokens: enough for encode_observation."""
    return SimpleNamespace(
        encode=lambda t, add_special_tokens=False: list(t), decode=lambda ids: "".join(ids)
    )


def test_the_endpoint_accepts_a_base_url_or_a_v1_url():
    assert openai_endpoint("http://h:1", "chat") == "http://h:1/v1/chat/completions"
    assert openai_endpoint("http://h:1/v1/", "completions") == "http://h:1/v1/completions"


# -- options ---------------------------------------------------------------------------------------
def _recipe(tmp_path, retriever: dict) -> dict:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"id": "1", "question": "Who?", "golden_answers": ["x"]}\n')
    return {
        "method": "search_r1",
        "model": {"name_or_path": "some/model"},
        "data": {"train": str(data)},
        "environment": {"kind": "retrieval", "retriever": retriever},
        "rewards": [{"path": "rewards.search_r1.em"}],
        "grpo": {"output_dir": str(tmp_path / "out")},
    }


@pytest.mark.parametrize(
    ("retriever", "message"),
    [
        ({"options": {"model": "m", "noise_end": 1.5}}, "noise_end: Input should be less than or equal to 1"),
        ({"options": {"model": "m", "backend": "openai"}}, "url: backend 'openai' needs url"),
        ({"url": "http://h:1", "options": {"model": "m"}}, "url: url is only for backend 'openai'"),
        ({"options": {"model": "m", "noisy_prompt": "junk"}}, "noisy_prompt: must contain {query}"),
        ({"options": {"model": "m", "api_key_env": "sk-live-123"}}, "api_key_env: must be the name"),
        ({"options": {"model": "m", "curriculum_steps": 0}}, "curriculum_steps: Input should be greater"),
        ({"options": {"model": "m", "noise": 0.2}}, "unknown option(s) ['noise']"),
        ({"options": {}}, "needs option(s) ['model']"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_options_fail_when_the_recipe_loads_naming_the_key(tmp_path, retriever, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, {"kind": "simulated", **retriever})))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert message in str(info.value) and "sk-live" not in str(info.value)


def test_a_missing_api_key_variable_is_named_when_the_retriever_is_built(monkeypatch):
    monkeypatch.delenv("NO_SUCH_SIM_KEY", raising=False)
    assert "simulated" in RETRIEVER_REGISTRY
    with pytest.raises(ValueError, match="'NO_SUCH_SIM_KEY', which is not set"):
        build_retriever(
            "simulated", backend="openai", url="http://h:1", model="m", api_key_env="NO_SUCH_SIM_KEY"
        )


# -- in process, and two GRPO steps end to end -----------------------------------------------------
def test_the_frozen_in_process_simulator_is_seeded_and_leaves_the_global_rng_alone(tiny_model_dir):
    import torch

    sim = TransformersSimulator(str(tiny_model_dir), max_new_tokens=6, temperature=1.0, batch_size=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = sim.generate(["Query: a", "Query: bb", "Query: a"], seed=11)
    assert torch.equal(torch.rand(3), expected)  # the trainer's random stream is untouched
    assert first == sim.generate(["Query: a", "Query: bb", "Query: a"], seed=11)
    assert first != sim.generate(["Query: a", "Query: bb", "Query: a"], seed=12)
    assert all(g.error is None and g.text for g in first)
    assert not any(p.requires_grad for p in sim._model.parameters())


QUESTIONS = [("Italy", "Rome"), ("Italy", "Rome"), ("Italy", "Rome"), ("Italy", "Rome"),
             ("France", "Paris"), ("France", "Paris"), ("France", "Paris"), ("France", "Paris")]  # fmt: skip


def _policy(tokenizer):
    def script(ids, _call):
        context = tokenizer.decode(ids).split("<|im_start|>assistant")[-1]
        if "</information>" not in context:
            country = "Italy" if "capital of Italy" in tokenizer.decode(ids) else "France"
            return f"<think>look it up</think><search>capital of {country}</search>"
        return "<think>so</think><answer>Rome</answer>"

    return script


def _simulated_recipe(tmp_path, tiny_model_dir, shared_data):
    """The tiny recipe with a simulated retriever: noise 0 at step 0, 1 from step 1 on."""
    from conftest import write_tiny_recipe

    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": str(i), "question": f"What is the capital of {c}?", "golden_answers": [a]}
        for i, (c, a) in enumerate(QUESTIONS)
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method="search_r1")
    data = yaml.safe_load(path.read_text())
    data["data"]["train"] = [{"path": str(qa)}]
    options = {"model": str(tiny_model_dir), "max_new_tokens": 6, "temperature": 1.0, "noise_start": 0.0,
               "noise_end": 1.0, "curriculum_steps": 1, "seed": 1}  # fmt: skip
    retriever = {"kind": "simulated", "options": options}
    data["environment"] = {"kind": "retrieval", "topk": 2, "retriever": retriever}
    data["budgets"] = {"max_turns": 3, "max_tokens_per_turn": 24, "max_obs_tokens": 64}
    data["grpo"].update(max_completion_length=160, save_strategy="no")
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_two_grpo_steps_with_simulated_documents_inserted_and_masked(
    tmp_path, tiny_model_dir, shared_data, tokenizer, monkeypatch
):
    from ssrl_trl.rollout import ScriptedBackend
    from ssrl_trl.train import build_trainer, run_training

    written: list[tuple[str, str]] = []  # (prompt, text) of every document the simulator wrote
    generate = TransformersSimulator.generate

    def spy(self, prompts, seed):
        out = generate(self, prompts, seed)
        written.extend((p, g.text) for p, g in zip(prompts, out, strict=True))
        return out

    monkeypatch.setattr(TransformersSimulator, "generate", spy)
    path = _simulated_recipe(tmp_path, tiny_model_dir, shared_data)
    recipe = load_recipe(path)
    run = build_trainer(recipe)
    run.rollout.backend = ScriptedBackend(tokenizer, _policy(tokenizer))
    assert run_training(run, recipe) == 0

    records = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8 and {r["step"] for r in records} == {0, 1}
    for rec in records:
        assert rec["num_searches"] == 1 and rec["stop_reason"] == "answer"
        # step 0: noise 0 (useful documents); step 1: the curriculum is at noise_end = 1
        label = "useful" if rec["step"] == 0 else "noisy"
        assert [[d.split(":")[:2] for d in docs] for docs in rec["doc_ids"]] == [[["sim", label]] * 2]
        for seg in rec["segments"]:
            n = seg["end"] - seg["start"]
            assert seg["masked_tokens"] == (0 if seg["kind"] == "model" else n), seg  # inserted: all 0
            assert rec["env_mask"][seg["start"] : seg["end"]] == [int(seg["kind"] == "model")] * n
        (obs,) = [s["text"] for s in rec["segments"] if s["kind"] == "observation"]
        query = rec["queries"][0]
        assert obs.startswith(f'\n\n<information>Doc 1(Title: "{query}") ') and obs.endswith(
            "</information>\n\n"
        )
        # the two documents are texts the simulator wrote for this query, from the useful or
        # the noisy instruction as the curriculum decided
        asked = [SimulatorPrompts().render(query, label == "noisy", n) for n in (1, 2)]
        pairs = [
            (clean_document(a[1]), clean_document(b[1]))
            for a, b in zip(written[::2], written[1::2], strict=True)
            if [a[0], b[0]] == asked
        ]
        assert any(all(t and t in obs for t in pair) for pair in pairs)
    assert len(written) == 16  # 2 steps x 4 searches x 2 documents, nothing else asked
    retriever = run.rollout.environment(tokenizer).retriever
    assert isinstance(retriever, SimulatedRetriever) and retriever.step is None  # training ended
    assert retriever.stats == {"documents": 16, "noisy": 8, "failed": 0}
