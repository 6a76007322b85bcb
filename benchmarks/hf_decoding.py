"""The HF backend's own decoding loop vs ``model.generate``: tokens/s of the same multi-turn rollouts.

Both arms run the rollout engine on the Search-R1 CPU recipe (``recipes/cpu/search_r1_smollm2.yaml``:
its prompt, forced ``<think>`` opening, budgets and in-process BM25 over the mini corpus) with
SmolLM2-135M in bf16, on the same ``--questions`` training questions × ``--samples`` samples:

* ``generate`` — ``HFBackend(own_loop=False)``: ``transformers``' ``model.generate`` for every turn,
  which re-reads the whole history and prefills each sample's identical prompt again;
* ``own`` — ``HFBackend()``: shared prompt prefill, KV reuse across turns, finished rows leave the
  batch (the default of every CPU recipe).

Sampling is seeded the same way in both arms, but the two paths draw random numbers differently, so
the episodes differ; the comparison is tokens generated per second of rollout. The arms alternate
(``--repeats`` times each) so drift in machine load hits both; the ratio uses the medians.

    python benchmarks/hf_decoding.py --questions 4 --samples 4 --repeats 2

Prints one JSON line per run and the ratio; ``--out FILE`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "cpu" / "search_r1_smollm2.yaml"
QUESTIONS = ROOT.parent / "shared" / "data" / "qa" / "mini_eval.jsonl"


def _parts(n_questions: int, samples: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssrl_trl.assembly import assemble, model_source
    from ssrl_trl.prompts import build_messages
    from ssrl_trl.recipe import load_recipe

    recipe = load_recipe(RECIPE, [])
    parts = assemble(recipe)
    source = model_source(recipe)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()[:n_questions]]
    prompts = []
    for row in rows:
        messages = build_messages(parts.template, row["question"], parts.tags, parts.system_prompt)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        prompts.extend([ids] * samples)  # a GRPO group: the same prompt `samples` times
    return parts, tokenizer, model, prompts


def run_arm(name: str, parts, tokenizer, model, prompts, seed: int) -> dict:
    import torch

    from ssrl_trl.rollout.backends import SamplingConfig
    from ssrl_trl.rollout.engine import RolloutEngine
    from ssrl_trl.rollout.hf_backend import HFBackend

    backend = HFBackend(model, tokenizer, own_loop=name == "own")
    engine = RolloutEngine(
        backend, parts.environment(tokenizer), tokenizer, parts.budgets,
        response_prefix=parts.response_prefix, schedule="batched",
    )  # fmt: skip
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        trajectories, _ = engine.run(prompts, SamplingConfig(temperature=0.8))
    seconds = time.perf_counter() - start
    generated = sum(sum(t.env_mask) for t in trajectories)
    row = {
        "arm": name,
        "episodes": len(trajectories),
        "turns": sum(t.turns for t in trajectories),
        "tokens_generated": generated,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(generated / seconds, 1),
        "prefilled_tokens": backend.stats.prefilled_tokens if name == "own" else None,
        "reused_tokens": backend.stats.reused_tokens if name == "own" else None,
        "load": os.getloadavg()[0],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    os.chdir(ROOT)  # the recipe names its paths relative to the repository
    parts, tokenizer, model, prompts = _parts(a.questions, a.samples)
    run_arm("own", parts, tokenizer, model, prompts[:2], a.seed)  # warm-up (first-call costs)
    rows = []
    for r in range(a.repeats):
        for name in ("generate", "own"):
            rows.append(run_arm(name, parts, tokenizer, model, prompts, a.seed + r))
    rate = {
        n: statistics.median(r["tokens_per_second"] for r in rows if r["arm"] == n)
        for n in ("generate", "own")
    }
    ratio = rate["own"] / rate["generate"]
    print(
        f"\nmulti-turn rollout tokens/s (median of {a.repeats}): model.generate {rate['generate']:.1f}, "
        f"own loop {rate['own']:.1f} -> ratio {ratio:.2f}x"
    )
    if a.out:
        a.out.write_text(json.dumps({"runs": rows, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
