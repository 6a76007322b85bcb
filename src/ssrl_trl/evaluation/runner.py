"""Run one *arm* of an evaluation — an environment, prompt, budgets and sampling — over QA items.

An evaluation is :meth:`RolloutEngine.run` over prompts, exactly as in training. Work is cut
into chunks of at most ``batch_size`` episodes (whole questions when ``n <= batch_size``, slices
of one question's ``n`` samples otherwise), so memory stays bounded for ``n = 1024``; only short
per-sample summaries are kept until a question's ``n`` samples are done, then its record is
appended to ``predictions_<arm>.jsonl`` and flushed. A rerun skips every question already in
that file (resume), after checking that the arm's settings (saved in ``<arm>.settings.json``)
have not changed.

Each chunk seeds ``random``/``torch`` from (seed, arm, first question id, first sample index),
so a chunk's samples do not depend on what ran before it.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..budgets import Budgets
from ..data import QAItem
from ..formats import FormatCheck, get_format_check
from ..jsonl import JsonlError, read_jsonl, repair_tail
from ..prompts import build_messages
from ..rollout import RolloutEngine, SamplingConfig, Trajectory, encode_prompt
from ..scoring import score_answer
from .signals import trajectory_signals

__all__ = ["Arm", "ArmResult", "SettingsMismatch", "plan_chunks", "read_predictions", "run_arm"]


class SettingsMismatch(RuntimeError):
    """Resuming into an output folder written with different arm settings."""


@dataclass
class Arm:
    """One way of answering the questions.

    ``env`` is a training environment (``SelfSearchEnv``, ``RetrievalEnv`` or any registered kind);
    its tag set is the prompt's, and its grammar scores ``format_valid`` unless ``format_check``
    names another (a :class:`~ssrl_trl.formats.FormatCheck` or its name). ``n`` samples per question; ``signals`` adds uncertainty signals of sample 0 to the
    record (used by hybrid routing; they change no answer, so they are not part of the settings
    checked on resume). ``describe`` is saved for the resume check.
    """

    name: str
    env: Any
    template: str
    budgets: Budgets
    sampling: SamplingConfig
    n: int = 1
    system: str | None = None
    signals: bool = False
    #: Forced, masked opening of every completion (e.g. ``"<think>"``), as in the training recipe.
    response_prefix: str | None = None
    #: The grammar that scores ``format_valid``; ``None``: the environment's tag set's own.
    format_check: FormatCheck | str | None = None
    describe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"arm {self.name!r}: n must be >= 1, got {self.n}")
        if self.format_check is not None:
            self.format_check = get_format_check(self.format_check)

    @property
    def check(self) -> FormatCheck:
        """The format check in use (see ``format_check``)."""
        return self.format_check or self.env.tags.format_check  # type: ignore[return-value]

    def settings(self) -> dict[str, Any]:
        return {
            "arm": self.name,
            "environment": type(self.env).__name__,
            "tags": self.env.tags.name,
            "template_sha1": hashlib.sha1(self.template.encode()).hexdigest()[:12],
            "system": self.system,
            "response_prefix": self.response_prefix,
            "format_check": self.check.name,
            "budgets": self.budgets.model_dump(),
            "sampling": asdict(self.sampling),
            "n": self.n,
            **self.describe,
        }


@dataclass
class ArmResult:
    records: list[dict[str, Any]]
    new_questions: int = 0
    seconds: float = 0.0
    generated_tokens: int = 0
    #: ``questions``, ``seconds``, ``generated_tokens`` summed over all runs into the folder.
    total: dict[str, float] = field(default_factory=dict)


Chunk = list[tuple[QAItem, int, int]]  # (item, first sample index, number of samples)


def plan_chunks(items: Sequence[QAItem], n: int, batch_size: int) -> Iterator[Chunk]:
    """Chunks of at most ``max(batch_size, 1)`` episodes, question-aligned where possible."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n >= batch_size:
        for item in items:
            for start in range(0, n, batch_size):
                yield [(item, start, min(batch_size, n - start))]
        return
    per = batch_size // n
    for i in range(0, len(items), per):
        yield [(item, 0, n) for item in items[i : i + per]]


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Records by id. A torn last line (a run killed mid-write) is skipped, and :func:`run_arm`
    cuts it off before appending; a bad line anywhere else (not JSON, not an object, no ``id``)
    is corruption and raises :class:`~ssrl_trl.jsonl.JsonlError` naming the file and line."""
    try:
        content = read_jsonl(path, required=("id",))
    except JsonlError as exc:
        raise JsonlError(
            exc.path, exc.line, f"{exc.reason}; delete the file (or pass --overwrite) to start over"
        ) from None
    return {rec["id"]: rec for rec in content.records}


def _check_settings(path: Path, settings: dict[str, Any], have_predictions: bool) -> None:
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    if path.is_file() and have_predictions:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SettingsMismatch(
                f"{path.parent} holds predictions of arm {settings['arm']!r} made with other settings "
                f"(differing: {diff}); use a new --out, or --overwrite to discard them"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _seed(*parts: Any) -> None:
    value = int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)
    random.seed(value)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.manual_seed(value)


def _summary(traj: Trajectory, golden: list[str], arm: Arm, tokenizer: Any) -> dict[str, Any]:
    # The format is judged on the text the training rewards see (TRL decodes without special tokens).
    text = tokenizer.decode(traj.completion_ids, skip_special_tokens=True)
    return {
        "answer": traj.answer,
        **score_answer(traj.answer, golden),
        "format_valid": arm.check.valid(text, arm.env.tags),
        "stop_reason": traj.stop_reason,
        "searches": traj.num_searches,
        "tokens": len(traj.completion_ids),
    }


def _record(item: QAItem, arm: Arm, samples: list[dict[str, Any]], first: dict[str, Any]) -> dict[str, Any]:
    m = len(samples)

    def mean(key: str) -> float:
        return sum(float(s[key]) for s in samples) / m

    rec = {
        "id": item.id,
        "dataset": item.dataset,
        "question": item.question,
        "golden_answers": item.golden_answers,
        "arm": arm.name,
        "n": m,
        "prediction": samples[0]["answer"],
        **first,
        "em": mean("em"),
        "cover_em": mean("cover_em"),
        "f1": mean("f1"),
        "format_valid": mean("format_valid"),
        "c_em": sum(int(s["em"]) for s in samples),
        "c_cover_em": sum(int(s["cover_em"]) for s in samples),
        "answered": sum(s["stop_reason"] == "answer" for s in samples) / m,
        "searches": mean("searches"),
        "tokens": mean("tokens"),
    }
    if m > 1:
        rec["answers"] = [s["answer"] for s in samples]
        rec["stop_reasons"] = dict(sorted(_count(s["stop_reason"] for s in samples).items()))
    return rec


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _first_details(traj: Trajectory, arm: Arm, tokenizer: Any, model: Any) -> dict[str, Any]:
    details = {
        "completion": tokenizer.decode(traj.completion_ids, skip_special_tokens=False),
        "stop_reason": traj.stop_reason,
        "queries": list(traj.queries),
        "doc_ids": [list(d) for d in traj.doc_ids],
    }
    if arm.signals:
        details["signals"] = trajectory_signals(traj, tokenizer, arm.env.tags, model=model)
    return details


class _Collector:
    """Short per-sample summaries of unfinished questions; a question's record is appended to the
    predictions file (and flushed) as soon as its ``n`` samples are in."""

    def __init__(self, arm: Arm, tokenizer: Any, model: Any, fh: Any) -> None:
        self.arm, self.tokenizer, self.model, self.fh = arm, tokenizer, model, fh
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.firsts: dict[str, dict[str, Any]] = {}

    def add(self, chunk: Chunk, trajs: list[Trajectory]) -> list[dict[str, Any]]:
        finished, pos = [], 0
        for item, first_index, count in chunk:
            for j, traj in enumerate(trajs[pos : pos + count]):
                self.samples.setdefault(item.id, []).append(
                    _summary(traj, item.golden_answers, self.arm, self.tokenizer)
                )
                if first_index + j == 0:
                    self.firsts[item.id] = _first_details(traj, self.arm, self.tokenizer, self.model)
            pos += count
            if len(self.samples[item.id]) == self.arm.n:
                rec = _record(item, self.arm, self.samples.pop(item.id), self.firsts.pop(item.id))
                self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self.fh.flush()
                finished.append(rec)
        return finished


def run_arm(
    arm: Arm,
    items: Sequence[QAItem],
    backend: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    seed: int = 0,
    model: Any = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> ArmResult:
    """Answer every item ``arm.n`` times; return one record per item, in item order.

    ``model`` (the HF model behind ``backend``) is only used for entropy signals.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / f"predictions_{arm.name}.jsonl"
    if overwrite and pred_path.exists():
        pred_path.unlink()
    done = read_predictions(pred_path)
    _check_settings(out / f"{arm.name}.settings.json", arm.settings(), bool(done))
    todo = [it for it in items if it.id not in done]
    engine = RolloutEngine(backend, arm.env, tokenizer, arm.budgets, response_prefix=arm.response_prefix)
    result = ArmResult(records=[])
    start = time.perf_counter()
    bar = tqdm(total=len(todo) * arm.n, desc=f"eval {arm.name}", unit="sample", disable=_disable(progress))
    repaired = repair_tail(pred_path)  # else the first new record would be glued to a torn or unended line
    if repaired:
        print(f"[eval] {repaired}", file=sys.stderr)
    with pred_path.open("a", encoding="utf-8") as fh:
        collector = _Collector(arm, tokenizer, model, fh)
        for chunk in plan_chunks(todo, arm.n, batch_size):
            _seed(seed, arm.name, chunk[0][0].id, chunk[0][1])
            batch = []
            for item, _, count in chunk:
                messages = build_messages(arm.template, item.question, arm.env.tags, arm.system)
                batch += [encode_prompt(tokenizer, messages)] * count
            trajs, stats = engine.run(batch, arm.sampling)
            result.generated_tokens += stats.generated_tokens
            for rec in collector.add(chunk, trajs):
                done[rec["id"]] = rec
                result.new_questions += 1
            bar.update(len(batch))
    bar.close()
    result.seconds = time.perf_counter() - start
    result.records = [done[it.id] for it in items]
    result.total = _add_timing(out / f"{arm.name}.timing.json", result)
    return result


def _add_timing(path: Path, result: ArmResult) -> dict[str, float]:
    """Cost summed over every (resumed) run into this folder, kept in ``<arm>.timing.json``."""
    total = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key, value in (
        ("questions", result.new_questions),
        ("seconds", result.seconds),
        ("generated_tokens", result.generated_tokens),
    ):
        total[key] = round(total.get(key, 0) + value, 2)
    path.write_text(json.dumps(total) + "\n", encoding="utf-8")
    return total


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
