"""The learnability check with the learning path deliberately broken: it must NOT reach the target.

``make learn-check`` is meant to catch a change that silently breaks learning. This script runs
the same check (same data, recipe, seed, held-out evaluation) with one part sabotaged from the
outside — test instrumentation wrapped around the public ``rollout_func`` and ``reward_funcs``,
nothing in the product changes:

* ``invert_mask`` — every ``env_mask`` flipped: the loss trains on the inserted documents and
  ignores what the model wrote;
* ``shuffle_rewards`` — each reward function's values permuted within each GRPO group, so a
  completion's reward belongs to a random sibling: the group's mean and spread are kept, the
  credit is not.

    python benchmarks/learn_check_ablation.py --ablation invert_mask
    python benchmarks/learn_check_ablation.py --ablation shuffle_rewards

Run ``ssrl-trl make-facts --out runs/learn_check/data --seed 0`` first (``make learn-check`` does).
Prints the held-out line and whether the target was (wrongly) reached.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


class InvertedMask:
    """Wraps a rollout function: 1 <-> 0 in every env_mask (lengths unchanged)."""

    def __init__(self, rollout) -> None:
        self.rollout = rollout
        self.__name__ = getattr(rollout, "__name__", "rollout")

    def __call__(self, prompts, trainer):
        out = self.rollout(prompts, trainer)
        out["env_mask"] = [[1 - m for m in mask] for mask in out["env_mask"]]
        return out


class ShuffledReward:
    """Wraps a reward function: its values are permuted within each group of ``group`` consecutive
    rows (TRL repeats each prompt ``num_generations`` times in a row), seeded."""

    def __init__(self, func, group: int, seed: int = 0) -> None:
        self.func, self.group, self.rng = func, group, random.Random(seed)
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, *args, **kwargs):
        values = list(self.func(*args, **kwargs))
        out = []
        for start in range(0, len(values), self.group):
            block = values[start : start + self.group]
            self.rng.shuffle(block)
            out.extend(block)
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ablation", choices=("invert_mask", "shuffle_rewards"), required=True)
    p.add_argument("--recipe", default="recipes/cpu/learn_check.yaml")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    os.chdir(ROOT)
    from ssrl_trl.learn_check import check
    from ssrl_trl.recipe import load_recipe
    from ssrl_trl.train import build_trainer, run_training

    out = f"runs/learn_check/ablation_{a.ablation}"
    recipe = load_recipe(a.recipe, [*a.set, f"grpo.output_dir={out}"])
    run = build_trainer(recipe)
    trainer = run.trainer
    if a.ablation == "invert_mask":
        trainer.rollout_func = InvertedMask(trainer.rollout_func)
    else:
        group = trainer.args.num_generations
        trainer.reward_funcs = [ShuffledReward(f, group, seed=i) for i, f in enumerate(trainer.reward_funcs)]
    code = run_training(run, recipe)
    result = json.loads(Path(out, "before_after.json").read_text())
    passed, reason = check(result, "em", 0.5, 0.3)
    print(
        f"ablation {a.ablation}: target {'REACHED (the check would not catch this!)' if passed else 'not reached'}"
        f" - {reason}"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
