"""Tokens sampled per minute of training: the embedded default now vs before, in one process.

Both arms train SmolLM2-135M with the SSRL CPU recipe (``recipes/cpu/ssrl_smollm2.yaml``) through
``build_trainer`` — the same path as ``make train-ssrl`` — for a few steps each, and count the
tokens the policy sampled over the seconds the optimizer steps took (rollout + optimisation, not
model loading):

* ``before`` — the embedded default as of commit 2741349: one question × 4 samples per step,
  ``transformers``' ``model.generate`` (every turn re-reads the whole history), sampling with the
  fp32 policy, 96-token completions;
* ``now`` — the current recipe: several questions per step, the own decoding loop (shared prompt
  prefill, KV reuse across turns, finished rows leave the batch) and a bf16 sampling copy.

    python benchmarks/training_throughput.py --steps-before 4 --steps-now 2

Prints each arm's steps, seconds, tokens generated and tokens per minute, then the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "cpu" / "ssrl_smollm2.yaml"

#: The embedded default before this change (commit 2741349), restated as overrides.
BEFORE = [
    "grpo.per_device_train_batch_size=4",
    "grpo.num_generations=4",
    "grpo.max_completion_length=96",
    "budgets.max_tokens_per_turn=96",
    "rollout.sampling_dtype=auto",
    "rollout.transformers_loop=generate",
    "data.system_prompt=null",
    "data.prompt_template=recipes/cpu/prompts/ssrl_example.txt",
]


def run_arm(name: str, overrides: list[str], steps: int, out: Path) -> dict:
    from ssrl_trl.recipe import load_recipe
    from ssrl_trl.train import build_trainer

    recipe = load_recipe(
        RECIPE,
        [
            *overrides,
            f"grpo.max_steps={steps}",
            f"grpo.output_dir={out / name}",
            "grpo.save_strategy=no",
            "evaluation.heldout=false",
            "rollout_log=false",
        ],
    )
    run = build_trainer(recipe)
    start = time.perf_counter()
    run.trainer.train()
    wall = time.perf_counter() - start
    cost = json.loads((out / name / "cost.json").read_text())
    rate = 60 * cost["tokens_generated"] / cost["step_seconds"]
    row = {
        "arm": name,
        "steps": cost["steps"],
        "rows_per_step": recipe.grpo["per_device_train_batch_size"],
        "train_seconds": round(cost["step_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "rollout_share": cost["rollout_share"],
        "tokens_generated": cost["tokens_generated"],
        "tokens_per_minute": round(rate, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps-before", type=int, default=4)
    p.add_argument("--steps-now", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    a = p.parse_args()
    os.chdir(ROOT)  # the recipes name paths relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        before = run_arm("before", BEFORE, a.steps_before, out)
        now = run_arm("now", [], a.steps_now, out)
    ratio = now["tokens_per_minute"] / before["tokens_per_minute"]
    print(
        f"\ntokens sampled per minute of training: before {before['tokens_per_minute']:.0f}, "
        f"now {now['tokens_per_minute']:.0f} -> ratio {ratio:.2f}x (target >= 3)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
