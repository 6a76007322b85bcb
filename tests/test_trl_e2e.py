"""End to end with the stock GRPOTrainer: a tiny random model trains for 2 steps through
``rollout_func`` in both environments, and masked tokens provably get zero gradient."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from ssrl_trl.environments import RetrievalEnv, SelfSearchEnv
from ssrl_trl.retrieval.base import Doc
from ssrl_trl.rewards import FormatReward, SearchR1EMReward, SSRLReward
from ssrl_trl.rollout import Budgets, ScriptedBackend, SearchRollout
from ssrl_trl.rollout.rollout_log import RecordingReward, RolloutLog

pytestmark = pytest.mark.slow


class EchoRetriever:
    def search(self, queries, k):
        return [[Doc(f"d{i}", f'"T{i}"\nAbout {q}.') for i in range(k)] for q in queries]


def _dataset(n=4):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: what is the capital of France?"}],
            "golden_answers": ["Paris"],
        }
        for i in range(n)
    ]
    return Dataset.from_list(rows)


def _trainer(tmp_path, model, tokenizer, rollout, rewards, max_steps=2, **overrides):
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=96,
        max_steps=max_steps,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        use_cpu=True,
        bf16=False,
        temperature=1.0,
        seed=0,
        **overrides,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=_dataset(),
        processing_class=tokenizer,
        rollout_func=rollout,
    )


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("env_name", ["self_search", "retrieval"])
def test_tiny_model_trains_two_steps_with_its_own_generations(
    tmp_path, tokenizer, tiny_model_factory, env_name
):
    """The real path: the trainer's model generates through HFBackend inside rollout_func."""
    if env_name == "self_search":
        factory, reward = (lambda tok: SelfSearchEnv()), SSRLReward()
    else:
        factory, reward = (lambda tok: RetrievalEnv(EchoRetriever(), tok, topk=2)), SearchR1EMReward()
    log = RolloutLog(tmp_path / "rollouts.jsonl", num_rewards=1)
    rollout = SearchRollout(factory, Budgets(max_turns=3, max_tokens_per_turn=24, max_obs_tokens=32), log=log)
    trainer = _trainer(tmp_path, tiny_model_factory(), tokenizer, rollout, [RecordingReward(reward, log)])
    trainer.train()
    log.flush()
    assert trainer.state.global_step == 2
    assert len(_losses(trainer)) == 2
    records = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8  # 2 steps x 4 generations
    for rec in records:
        assert len(rec["completion_ids"]) == len(rec["env_mask"]) <= 96
        assert reward.__name__ in rec["rewards"]
    metrics = rollout.pop_metrics()
    assert metrics["rollout/turns"] >= 1.0


def _scripted_rollout(tokenizer, env_factory):
    answers = ["Paris", "London", "Paris", "Rome"]

    def script(_prompt, i):
        if i % 2 == 0 and env_factory is not None and "retrieval" in env_factory.__name__:
            return "<think>look it up</think><search>capital of France</search>"
        return (
            "<think>recall</think><search>capital of France</search>"
            "<information>France's capital is Paris, on the Seine.</information>"
            f"<think>done</think><answer>{answers[i % 4]}</answer>"
        )

    return ScriptedBackend(tokenizer, script)


def test_masked_tokens_get_zero_gradient(tmp_path, tokenizer, tiny_model_factory):
    """Perturb the final hidden states that predict masked (self-written information / inserted)
    tokens: the GRPO loss does not move. Perturb an unmasked position: it does (so the test can
    fail). The hook sits on the final norm because TRL computes log-probs with a fused LM head
    from these hidden states; each position's hidden state feeds only the next token's logits."""

    def self_search(tok):
        return SelfSearchEnv()

    rollout = SearchRollout(
        self_search, Budgets(max_turns=1, max_tokens_per_turn=96), backend=_scripted_rollout(tokenizer, None)
    )
    model = tiny_model_factory(1)
    trainer = _trainer(tmp_path, model, tokenizer, rollout, [SSRLReward()])
    batch = [dict(row) for row in _dataset()]
    inputs = trainer._generate_and_score_completions(batch)  # the exact batch TRL trains on
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we bypass here
    # Slightly off-policy old log-probs (ratio ~1.05, inside the clip range) make the loss value,
    # not only its gradient, depend on the current log-probs: perturbing a trained position must move it.
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logits = model(input_ids=ids, attention_mask=attention).logits[
            :, -inputs["completion_ids"].shape[1] - 1 : -1
        ]
        current = (
            torch.log_softmax(logits.float(), -1)
            .gather(-1, inputs["completion_ids"].unsqueeze(-1))
            .squeeze(-1)
        )
    inputs["old_per_token_logps"] = current - 0.05
    tool_mask = inputs["tool_mask"]
    completion_mask = inputs["completion_mask"]
    assert (tool_mask == 0).any() and (inputs["advantages"] != 0).any()
    masked = (tool_mask == 0) & (completion_mask == 1)
    unmasked = (tool_mask == 1) & (completion_mask == 1)
    n_completion = inputs["completion_ids"].shape[1]

    def loss_with_noise(select):
        def hook(_module, _inp, out):
            hidden = out.clone()
            offset = hidden.shape[1] - (n_completion + 1)  # position p predicts token p + 1
            rows, cols = torch.nonzero(select, as_tuple=True)
            hidden[rows, cols + offset] += 5.0 * torch.randn(len(rows), hidden.shape[-1])
            return hidden

        handle = model.model.norm.register_forward_hook(hook) if select is not None else None
        try:
            return trainer.compute_loss(model, inputs).item()
        finally:
            if handle:
                handle.remove()

    torch.manual_seed(0)
    base = loss_with_noise(None)
    assert base != 0.0
    assert loss_with_noise(masked) == pytest.approx(base, abs=1e-6)
    assert abs(loss_with_noise(unmasked) - base) > 1e-4

    # And the gradient w.r.t. the hidden states that predict masked tokens is exactly zero.
    captured = {}

    def keep(_m, _i, out):
        out.retain_grad()
        captured["hidden"] = out

    handle = model.model.norm.register_forward_hook(keep)
    trainer.compute_loss(model, inputs).backward()
    handle.remove()
    grad = captured["hidden"].grad
    offset = grad.shape[1] - (n_completion + 1)
    rows, cols = torch.nonzero(masked, as_tuple=True)
    assert torch.count_nonzero(grad[rows, cols + offset]) == 0
    rows, cols = torch.nonzero(unmasked, as_tuple=True)
    assert torch.count_nonzero(grad[rows, cols + offset]) > 0


def test_scripted_retrieval_through_the_trainer_returns_exact_masks(tmp_path, tokenizer, tiny_model_factory):
    def retrieval(tok):
        return RetrievalEnv(EchoRetriever(), tok, topk=2)

    rollout = SearchRollout(
        retrieval,
        Budgets(max_turns=3, max_tokens_per_turn=64, max_obs_tokens=40),
        backend=_scripted_rollout(tokenizer, retrieval),
    )
    trainer = _trainer(
        tmp_path, tiny_model_factory(2), tokenizer, rollout, [SearchR1EMReward(), FormatReward("search_r1")]
    )
    inputs = trainer._generate_and_score_completions([dict(r) for r in _dataset()])
    out_mask = inputs["tool_mask"] * inputs["completion_mask"]
    assert (out_mask.sum(dim=1) < inputs["completion_mask"].sum(dim=1)).all()  # every row has inserted tokens
    trainer.train()
    assert trainer.state.global_step == 2


def test_rollout_rejects_a_bad_prompt_type(tmp_path, tokenizer, tiny_model_factory):
    rollout = SearchRollout(lambda tok: SelfSearchEnv(), Budgets(max_turns=1))

    class FakeTrainer:
        processing_class = tokenizer
        args = type("A", (), {"max_completion_length": 16})()

    with pytest.raises(TypeError, match="string or a list of chat messages"):
        rollout([42], FakeTrainer())
