"""SIGTERM ends a training run at a step boundary, with a checkpoint, instead of mid-save.

Schedulers (Slurm, Kubernetes, a spot-instance reclaim) send SIGTERM and wait a grace period
before SIGKILL. Dying at once would lose the step in progress and, during a save, leave a
half-written ``checkpoint-N``. With :class:`GracefulStop` attached:

- the first SIGTERM only sets a flag: the step in progress finishes, a checkpoint of it is saved
  (a save already running finishes), training stops and ``main`` exits with 143 (128 + SIGTERM);
  ``--resume auto`` then continues from that checkpoint;
- a second SIGTERM means "now": a save in progress is abandoned (its unfinished folder removed,
  so checkpoints stay complete or absent) and the process exits with 143 at once.

Only public ``TrainerCallback`` hooks and ``control`` flags are used. On several ranks the flag is
agreed with an all-reduce at step ends, so all ranks stop after the same step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .checkpoints import checkpoint_problem

__all__ = ["GracefulStop"]

PREFIX = "[ssrl-trl]"


def _say(message: str) -> None:
    """Write from a signal handler: ``print`` may be interrupted mid-write and refuse re-entry."""
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())


def _any_rank(flag: bool) -> bool:
    from .health_guards import any_rank as agree

    return agree(flag)


class GracefulStop(TrainerCallback):
    """Finish the step and save on the first SIGTERM; abandon a running save on the second."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = tuple(signals)
        self.requested = False  # a signal arrived
        self.stopped = False  # training stopped because of it, after saving
        self.received: int | None = None
        self.saving: Path | None = None  # the checkpoint being written (set before the save starts)
        self._previous: dict[int, Any] = {}

    @classmethod
    def attach(cls, trainer: Any, signals: tuple[int, ...] = (signal.SIGTERM,)) -> GracefulStop:
        """Add a new instance to ``trainer`` (public ``add_callback``); the handler is installed
        when training begins and removed when it ends."""
        callback = cls(signals)
        trainer.add_callback(callback)
        return callback

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or signal.SIGTERM)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.requested:
            self.requested, self.received = True, signum
            _say(
                f"{PREFIX} {name}: finishing the current step, saving a checkpoint and stopping "
                f"(send {name} again to stop at once)"
            )
            return
        message = f"{PREFIX} second {name}: stopping now"
        target = self.saving
        if target is not None and target.is_dir() and checkpoint_problem(target) is not None:
            shutil.rmtree(target, ignore_errors=True)  # complete or absent, never half-written
            message += f"; abandoned the unfinished {target.name}"
        _say(message + "; resume with --resume auto")
        os._exit(self.exit_code)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _note_save(self, args, state, control) -> None:
        if control.should_save:
            self.saving = Path(args.output_dir) / f"checkpoint-{state.global_step}"

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.requested):
            self.requested = self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        self._note_save(args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._note_save(args, state, control)  # a guard may ask for a save while logging

    def on_evaluate(self, args, state, control, **kwargs):
        self._note_save(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        self.saving = None
        if _any_rank(self.requested):  # the signal came while saving: that checkpoint is the last
            self.requested = self.stopped = True
            control.should_training_stop = True
        if self.stopped and state.is_world_process_zero:
            print(
                f"{PREFIX} stopped after step {state.global_step} on "
                f"{signal.Signals(self.received or signal.SIGTERM).name}; saved "
                f"checkpoint-{state.global_step}; continue with --resume auto",
                flush=True,
            )
