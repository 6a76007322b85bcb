"""Registries and interfaces that make a new method cheap: environment and retriever kinds by
name with typed options validated with the recipe, an environment interface a third environment
fits without touching the engine, one backend choice and one vLLM sampling mapping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

import ssrl_trl.environments.registry as environments
import ssrl_trl.retrieval.factory as retrievers
from ssrl_trl.assembly import assemble
from ssrl_trl.environments import Environment
from ssrl_trl.environments.base import encode_observation
from ssrl_trl.environments.registry import (
    EnvironmentOptions,
    environment_kind,
    environment_kinds,
    register_environment,
)
from ssrl_trl.protocol import SEARCH_R1
from ssrl_trl.recipe import RecipeError, load_recipe
from ssrl_trl.retrieval.base import Doc
from ssrl_trl.retrieval.factory import RetrieverOptions, build_retriever, register_retriever
from ssrl_trl.rollout import Budgets, GenRequest, RolloutEngine, SamplingConfig, ScriptedBackend, backend_kind
from ssrl_trl.rollout.backends import vllm_sampling_fields


class EchoEnv(Environment):
    """A third environment: replies to a search with the query itself, shouted."""

    def __init__(self, tags, tokenizer, shout: str) -> None:
        self.tags, self.tokenizer, self.shout = tags, tokenizer, shout

    def replies_to(self, action):
        return action.kind == "search"

    def respond(self, actions, budgets):
        opening, closing = self.tags.information
        return [
            encode_observation(self.tokenizer, opening, a.content.upper() + self.shout, closing, b)
            for a, b in zip(actions, budgets, strict=True)
        ]


class EchoOptions(EnvironmentOptions):
    shout: str = "!"


class ConstantOptions(RetrieverOptions):
    title: str
    copies: int = 1


class ConstantRetriever:
    def __init__(self, title: str, copies: int) -> None:
        self.title, self.copies = title, copies

    def search(self, queries, k):
        return [
            [Doc(str(i), f'"{self.title}"\nabout {q}') for i in range(min(k, self.copies))] for q in queries
        ]


@pytest.fixture(autouse=True)
def new_kinds(monkeypatch):
    """Register the two new kinds for one test (the registries are restored afterwards)."""
    monkeypatch.setattr(environments, "ENVIRONMENT_REGISTRY", dict(environments.ENVIRONMENT_REGISTRY))
    monkeypatch.setattr(retrievers, "RETRIEVER_REGISTRY", dict(retrievers.RETRIEVER_REGISTRY))
    register_environment("echo", EchoOptions, lambda o, parts: EchoEnv(parts.tags, parts.tokenizer, o.shout))
    register_retriever("constant", ConstantOptions, lambda o: ConstantRetriever(o.title, o.copies))


def _recipe(tmp_path, environment: dict) -> dict:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"id": "1", "question": "Who?", "golden_answers": ["x"]}\n')
    return {
        "method": "search_r1",
        "model": {"name_or_path": "some/model"},
        "data": {"train": str(data)},
        "environment": environment,
        "rewards": [{"path": "rewards.search_r1.em"}],
        "grpo": {"output_dir": str(tmp_path / "out"), "max_completion_length": 64},
    }


def _load(tmp_path, environment: dict):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, environment)))
    return load_recipe(path)


def test_a_registered_environment_kind_is_one_recipe_key_away_and_runs_in_the_engine(tmp_path, tokenizer):
    recipe = _load(tmp_path, {"kind": "echo", "shout": "?!"})
    parts = assemble(recipe)
    assert parts.budgets.max_completion_tokens == 64 and parts.tags == SEARCH_R1
    env = parts.environment(tokenizer)
    assert isinstance(env, EchoEnv) and env.shout == "?!"
    texts = ["<search>who wrote dune</search>", "<answer>herbert</answer>"]
    backend = ScriptedBackend(tokenizer, lambda _p, i: texts[i])
    engine = RolloutEngine(backend, env, tokenizer, Budgets(max_turns=3, max_completion_tokens=200))
    traj = engine.run([[1]])[0][0]
    inserted = [
        tokenizer.decode(traj.completion_ids[s.start : s.end])
        for s in traj.segments
        if s.kind == "observation"
    ]
    assert inserted == ["<information>WHO WROTE DUNE?!</information>"]
    assert traj.answer == "herbert" and traj.num_searches == 1 and traj.queries == ["who wrote dune"]


def test_a_kind_s_options_are_typed_and_checked_when_the_recipe_loads(tmp_path):
    with pytest.raises(RecipeError, match="unknown key 'environment.shot'"):
        _load(tmp_path, {"kind": "echo", "shot": "!"})
    with pytest.raises(RecipeError, match="environment.shout: Input should be a valid string"):
        _load(tmp_path, {"kind": "echo", "shout": [1]})
    with pytest.raises(
        RecipeError,
        match="unknown environment kind 'ecko'; known kinds: echo, parallel_retrieval, retrieval, self_search",
    ):
        _load(tmp_path, {"kind": "ecko"})
    assert environment_kinds() == ["echo", "parallel_retrieval", "retrieval", "self_search"]
    assert environment_kind("retrieval").options.model_fields["topk"].default == 3


def test_a_registered_retriever_kind_takes_typed_options_from_the_recipe(tmp_path, tokenizer):
    retriever = {"kind": "constant", "options": {"title": "T", "copies": 2}}
    recipe = _load(tmp_path, {"kind": "retrieval", "topk": 2, "retriever": retriever})
    env = assemble(recipe).environment(tokenizer)
    replies = env.respond([SimpleNamespace(kind="search", content="q")], [100])
    assert replies[0].doc_ids == ["0", "1"]
    with pytest.raises(RecipeError, match=r"needs option\(s\) \['title'\]"):
        _load(tmp_path, {"kind": "retrieval", "retriever": {"kind": "constant"}})
    with pytest.raises(RecipeError, match="copies: Input should be a valid integer"):
        _load(
            tmp_path,
            {
                "kind": "retrieval",
                "retriever": {"kind": "constant", "options": {"title": "T", "copies": "two"}},
            },
        )
    # the message lists every registered kind, sorted, the new one included (which others are
    # registered depends on the modules earlier tests imported)
    with pytest.raises(ValueError, match="unknown retriever kind 'elastic'") as error:
        build_retriever("elastic")
    listed = str(error.value).split("valid kinds: ")[1].split(", ")
    assert listed == sorted(retrievers.RETRIEVER_KINDS)
    assert {"bm25", "constant", "dense", "http", "index", "memory"} <= set(listed)
    assert build_retriever("constant", title="x").search(["q"], 3) == [[Doc("0", '"x"\nabout q')]]


def test_one_function_picks_the_backend_from_the_grpo_config():
    assert backend_kind(SimpleNamespace(use_vllm=False)) == "transformers"
    assert backend_kind(SimpleNamespace(use_vllm=True, vllm_mode="server")) == "vllm_server"
    assert backend_kind(SimpleNamespace(use_vllm=True, vllm_mode="colocate")) == "vllm_colocate"
    with pytest.raises(NotImplementedError, match="vllm_enable_sleep_mode"):
        backend_kind(SimpleNamespace(use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=True))
    with pytest.raises(NotImplementedError, match="vllm_tensor_parallel_size > 1"):
        backend_kind(SimpleNamespace(use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=2))


def test_sleep_mode_fails_before_any_weights_load(tmp_path, tiny_model_dir, shared_data, capsys, monkeypatch):
    import ssrl_trl.models as models
    from conftest import write_tiny_recipe
    from ssrl_trl.train import main

    def refuse(*_a, **_k):
        raise AssertionError("model weights were loaded before the backend was checked")

    monkeypatch.setattr(models, "load_model", refuse)
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data)
    argv = ["--config", str(path), "--set", "grpo.use_vllm=true", "--set", "grpo.vllm_enable_sleep_mode=true"]
    assert main(argv) == 2
    assert "grpo.vllm_enable_sleep_mode is not supported" in capsys.readouterr().err


def test_one_mapping_from_sampling_settings_to_vllm():
    request = GenRequest([1, 2], 7, ("</search>",))
    fields = vllm_sampling_fields(request, SamplingConfig(temperature=0.7, top_k=0, min_p=0.1))
    assert fields["top_k"] == -1 and fields["max_tokens"] == 7 and fields["stop"] == ["</search>"]
    assert (
        fields["logprobs"] == 0 and fields["include_stop_str_in_output"] and not fields["skip_special_tokens"]
    )
    assert vllm_sampling_fields(request, SamplingConfig(top_k=20))["top_k"] == 20
