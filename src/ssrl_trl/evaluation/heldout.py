"""Held-out evaluation inside a training run: the starting model before, the trained model after
(and optionally every N steps), compared question by question.

Both evaluations use exactly what ``ssrl-trl eval`` uses — :func:`~.runner.run_arm` with the
run's environment (and so its retriever), prompt template, system prompt, forced response prefix
and budgets, greedy decoding — on the recipe's ``data.eval`` questions, which the overlap check
keeps apart from the training questions. The result is ``<output_dir>/before_after.json``: the
before and after means of EM, cover-EM, F1, format-valid rate, answered fraction and searches
per question, and the paired-bootstrap 95% interval of each difference.

Predictions go to ``<output_dir>/heldout/{before,after,step-N}/``. The before folder resumes
(a resumed run does not re-evaluate the starting model); the others are rewritten.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..budgets import Budgets
from ..callbacks import record_log
from ..data import QAItem
from .compare import compare_records, format_line, write_comparison
from .runner import Arm, run_arm

__all__ = ["HeldOut", "HeldOutCallback"]

logger = logging.getLogger(__name__)

_CURVE_METRICS = ("em", "cover_em", "f1", "format_valid", "answered", "searches")


@dataclass
class HeldOut:
    """What to evaluate and how; see the module docstring."""

    items: list[QAItem]
    env: Any
    template: str
    budgets: Budgets
    out_dir: Path
    system: str | None = None
    response_prefix: str | None = None
    batch_size: int = 64
    seed: int = 0
    resamples: int = 10_000
    sampling_dtype: str = "auto"
    #: The starting model, recorded with the predictions: a resumed run must not reuse the
    #: "before" answers of another model or another question set.
    model_name: str = ""

    def arm(self) -> Arm:
        import hashlib

        from ..rollout import SamplingConfig

        digest = hashlib.sha1(
            json.dumps([[i.id, i.question, i.golden_answers] for i in self.items]).encode()
        ).hexdigest()[:12]
        return Arm(
            "heldout",
            self.env,
            self.template,
            self.budgets,
            SamplingConfig(temperature=0.0),
            system=self.system,
            response_prefix=self.response_prefix,
            describe={
                "starting_model": self.model_name,
                "questions_sha1": digest,
                "dtype": self.sampling_dtype,
            },
        )

    def evaluate(
        self, model: Any, tokenizer: Any, name: str, *, resume: bool = False
    ) -> list[dict[str, Any]]:
        """Greedy answers of ``model`` to every held-out question; records in item order."""
        import torch

        from ..rollout.hf_backend import HFBackend
        from ..rollout.trl_adapter import SamplingCopy

        sampler = SamplingCopy(self.sampling_dtype).model_for(model, step=0)
        was_training = sampler.training
        sampler.eval()
        py_state = random.getstate()
        try:
            # run_arm seeds the global generators per chunk; training must not notice the evaluation.
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                result = run_arm(
                    self.arm(),
                    self.items,
                    HFBackend(sampler, tokenizer, batch_size=self.batch_size),
                    tokenizer,
                    self.out_dir / "heldout" / name,
                    batch_size=self.batch_size,
                    seed=self.seed,
                    overwrite=not resume,
                )
        finally:
            random.setstate(py_state)
            if was_training:
                sampler.train()
        return result.records

    def compare(
        self, before: list[dict[str, Any]], after: list[dict[str, Any]], meta: dict[str, Any]
    ) -> dict:
        """Paired comparison, written to ``before_after.json`` / ``.png`` in the output folder."""
        result = compare_records(before, after, resamples=self.resamples, seed=self.seed)
        result.update(meta)
        write_comparison(self.out_dir, result, title=str(meta.get("title", "")))
        return result


def summary_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """Means of the compared metrics over held-out records (``heldout/<metric>`` in the logs)."""
    n = max(len(records), 1)
    return {f"heldout/{m}": sum(float(r.get(m, 0.0)) for r in records) / n for m in _CURVE_METRICS}


class HeldOutCallback(TrainerCallback):
    """Evaluates the held-out set every ``every_steps`` optimizer steps and adds ``heldout/*`` to
    that step's logs (the reporters and ``log_history`` see them); the curve goes to
    ``<output_dir>/heldout_curve.jsonl``. Only the main process evaluates; the others wait."""

    def __init__(self, heldout: HeldOut, trainer: Any, every_steps: int) -> None:
        self.heldout, self.trainer, self.every_steps = heldout, trainer, every_steps
        self._pending: dict[str, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if (
            self.every_steps <= 0
            or state.global_step % self.every_steps
            or state.global_step >= state.max_steps
        ):
            return
        accelerator = self.trainer.accelerator
        if accelerator.is_main_process:
            tokenizer = getattr(self.trainer.processing_class, "tokenizer", self.trainer.processing_class)
            records = self.heldout.evaluate(self.trainer.model, tokenizer, f"step-{state.global_step}")
            self._pending = summary_metrics(records)
            with (self.heldout.out_dir / "heldout_curve.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **self._pending}) + "\n")
            logger.info("step %d: %s", state.global_step, self._pending)
        accelerator.wait_for_everyone()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        record_log(state, logs, self._pending)
        self._pending = {}


def line(result: dict[str, Any]) -> str:
    """The held-out line of a run summary (EM, then format and answered rates)."""
    return format_line(result, "em")
