"""Resume from a checkpoint that is complete, and make the run's logs agree with it.

    python -m ssrl_trl.train --config recipes/ssrl.yaml --resume auto

A process killed while saving (SIGKILL, a full disk, a second SIGTERM) leaves a ``checkpoint-N``
folder without its ``trainer_state.json``: transformers writes that file last, after the weights,
optimizer, scheduler and RNG states, so its presence (and a ``global_step`` of ``N`` inside) is
what makes a checkpoint complete. ``--resume auto`` takes the newest complete checkpoint, says
which ones it skipped and removes them, so that checkpoints are either complete or absent (and
the next save of step ``N`` does not land in a folder full of stale files).

Rollouts are logged during a step, checkpoints after it: a run killed between the two has logged
steps that the resumed run will log again. :func:`prepare_resume` therefore rewrites
``<output_dir>/rollouts*.jsonl`` (atomically) keeping only records of steps before the resumed
step, so each step is logged once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .jsonl import filter_jsonl

__all__ = [
    "CheckpointError",
    "ResumePlan",
    "checkpoint_problem",
    "find_resumable",
    "prepare_resume",
    "prune_rollout_logs",
]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR pattern
_STATE = "trainer_state.json"
_ROLLOUT_LOG = re.compile(r"^rollouts(?:\.rank(\d+))?\.jsonl$")
PREFIX = "[ssrl-trl] resume:"


def _say(message: str) -> None:
    print(message, flush=True)


class CheckpointError(UserError):
    """``--resume`` names something that cannot be resumed from."""


@dataclass
class ResumePlan:
    """The checkpoint to resume from (``None``: start at step 0), its step, and the incomplete
    checkpoints passed over on the way, newest first, each with the reason."""

    checkpoint: Path | None
    step: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a complete checkpoint, or ``None`` if it is."""
    path = Path(path)
    state = path / _STATE
    if not state.is_file():
        return f"no {_STATE} (the save did not finish)"
    try:
        data = json.loads(state.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{_STATE} is cut off (the save did not finish)"
    except OSError as exc:
        return f"{_STATE} cannot be read ({exc.strerror or exc})"
    step = data.get("global_step") if isinstance(data, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        return f"{_STATE} holds no global_step"
    match = _CHECKPOINT.match(path.name)
    if match and int(match.group(1)) != step:
        return f"{_STATE} is for step {step}, not {match.group(1)}"
    return None


def _step(path: Path) -> int:
    return int(json.loads((path / _STATE).read_text(encoding="utf-8"))["global_step"])


def find_resumable(output_dir: str | os.PathLike[str]) -> ResumePlan:
    """The newest complete ``checkpoint-N`` of ``output_dir`` and the incomplete newer ones."""
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    skipped: list[tuple[Path, str]] = []
    for _, path in sorted(found, key=lambda item: item[0], reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return ResumePlan(path, _step(path), skipped)
        skipped.append((path, problem))
    return ResumePlan(None, 0, skipped)


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _owned_logs(output_dir: Path, rank: int, world_size: int) -> list[Path]:
    """The rollout logs this rank rewrites: its own (``rollouts.jsonl`` is rank 0's), and on rank 0
    those of ranks the current world does not have, so no two ranks rewrite the same file."""
    if not output_dir.is_dir():
        return []
    owned = []
    for path in sorted(output_dir.iterdir()):
        match = _ROLLOUT_LOG.match(path.name)
        if not match or not path.is_file():
            continue
        owner = int(match.group(1) or 0)
        if owner == rank or (rank == 0 and owner >= world_size):
            owned.append(path)
    return owned


def prune_rollout_logs(
    output_dir: str | os.PathLike[str],
    step: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    echo: Callable[[str], None] = _say,
) -> dict[str, int]:
    """Drop records of steps ``>= step`` from this rank's ``rollouts*.jsonl``; dropped count per file.

    A record's ``step`` is the trainer's ``global_step`` while it was generated, so a run resumed
    at step ``N`` logs steps ``N, N+1, ...`` again; records without a numeric step are kept.
    """
    dropped_by_file = {}
    for path in _owned_logs(Path(output_dir), rank, world_size):
        kept, dropped = filter_jsonl(path, lambda rec: not _at_or_after(rec.get("step"), step))
        if dropped:
            dropped_by_file[path.name] = dropped
            echo(
                f"{PREFIX} {path.name}: dropped {dropped} record(s) of steps >= {step} "
                f"(they are logged again from the resumed step); kept {kept}"
            )
    return dropped_by_file


def _at_or_after(value: object, step: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= step


def prepare_resume(
    arg: str | None, output_dir: str | os.PathLike[str], *, echo: Callable[[str], None] = _say
) -> str | None:
    """What ``train --resume ARG`` resumes from: ``None`` (start fresh) or a checkpoint folder.

    ``auto`` takes the newest complete checkpoint in ``output_dir`` (or none), reports and removes
    incomplete ones; a folder must be a complete checkpoint. Either way the rollout logs of
    ``output_dir`` lose the records of the steps that will run again. Without ``--resume``
    nothing is touched.
    """
    if arg is None:
        return None
    rank, world_size = _rank_and_world()
    if arg == "auto":
        plan = find_resumable(output_dir)
        for path, problem in plan.skipped:
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
                echo(f"{PREFIX} skipped incomplete {path.name}: {problem}; removed it")
        chosen, step = plan.checkpoint, plan.step
        if rank == 0:
            echo(
                f"{PREFIX} from {chosen} (step {step})" if chosen else f"{PREFIX} no checkpoint; from step 0"
            )
    else:
        chosen = Path(arg)
        if not chosen.is_dir():
            raise CheckpointError(f"--resume {arg}: no such checkpoint directory")
        problem = checkpoint_problem(chosen)
        if problem is not None:
            raise CheckpointError(
                f"--resume {arg}: not a complete checkpoint ({problem}); pass another one or --resume auto"
            )
        step = _step(chosen)
    prune_rollout_logs(output_dir, step, rank=rank, world_size=world_size, echo=echo)
    return None if chosen is None else str(chosen)
