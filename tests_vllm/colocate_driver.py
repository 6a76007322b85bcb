"""Runs a short colocate-vLLM GRPO job in its own process and writes what the tests check to JSON.

    python tests_vllm/colocate_driver.py RECIPE OUT.json [--set KEY=VALUE ...]

Each engine gets its own process (TRL's colocate engine initialises torch.distributed, once per
process). At every rollout, right after TRL's weight sync, it records:

* the engine's prompt log-probs of a fixed probe sequence, and the trainer model's log-probs of
  the same tokens (equal ⇒ the engine holds the weights being trained);
* for every trajectory, the sampled log-probs the backend returned and the trainer model's
  log-probs of the same tokens (temperature-scaled, as TRL's importance sampling sees them),
  on model tokens only; plus the trajectory's lengths and masks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PROBE = "The Eiffel Tower is in Paris. <search>capital of France</search> <answer>Paris</answer>"


def trainer_logprobs(trainer, model, ids: list[int], start: int, temperature: float) -> list[float]:
    """Log-probs of ids[start:] under ``model`` given ids[:start], in the trainer's precision
    (its autocast), as TRL computes them for importance sampling."""
    import torch

    with torch.no_grad(), trainer.accelerator.autocast():
        logits = model(input_ids=torch.tensor([ids])).logits[0, start - 1 : len(ids) - 1].float()
        logps = torch.log_softmax(logits / temperature, dim=-1)
        return logps.gather(1, torch.tensor(ids[start:]).unsqueeze(1)).squeeze(1).tolist()


def engine_prompt_logprobs(llm, ids: list[int]) -> list[float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = llm.generate(
        [TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    return [entry[tok].logprob for tok, entry in zip(ids[1:], out.prompt_logprobs[1:], strict=True)]


class Probe:
    def __init__(self, inner, records: list):
        self.inner, self.records = inner, records
        self.__name__ = "probe"

    def __call__(self, prompts, trainer):
        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        temperature = float(trainer.args.temperature)
        probe_ids = tok.encode(PROBE, add_special_tokens=False)
        rec = {
            "step": int(trainer.state.global_step),
            "probe_engine": engine_prompt_logprobs(trainer.vllm_generation.llm, probe_ids),
            "probe_trainer": trainer_logprobs(trainer, model, probe_ids, 1, 1.0),
            "trajectories": [],
        }
        out = self.inner(prompts, trainer)
        for p, c, lp, mask in zip(
            out["prompt_ids"], out["completion_ids"], out["logprobs"], out["env_mask"], strict=True
        ):
            recomputed = trainer_logprobs(trainer, model, p + c, len(p), temperature) if c else []
            rec["trajectories"].append(
                {
                    "prompt_len": len(p),
                    "completion_ids": c,
                    "logprobs": lp,
                    "env_mask": mask,
                    "trainer_logprobs": recomputed,
                }
            )
        rec["num_searches"] = out.get("num_searches")
        self.records.append(rec)
        return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("out")
    parser.add_argument("--set", action="append", default=[])
    a = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ssrl_trl.recipe import load_recipe
    from ssrl_trl.train import build_trainer

    recipe = load_recipe(a.recipe, a.set)
    run = build_trainer(recipe)
    trainer, rollout = run.trainer, run.rollout
    records: list = []
    trainer.rollout_func = Probe(trainer.rollout_func, records)  # test instrumentation only
    result = trainer.train()
    cfg = trainer.vllm_generation.llm.llm_engine.vllm_config
    summary = {
        "records": records,
        "log_history": trainer.state.log_history,
        "train_loss": result.training_loss,
        "engine_dtype": str(cfg.model_config.dtype),
        "prefix_caching": bool(cfg.cache_config.enable_prefix_caching),
        "schedule": rollout.last_schedule,
    }
    with open(a.out, "w") as f:
        json.dump(summary, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
