"""JSONL log of what the model did: one line per trajectory, readable by a person.

Each record holds the step, the prompt, the completion as a list of segments (model text vs
inserted text, with token counts), the token ids and env_mask (so a viewer can draw the mask
from tokens, not from re-parsing), the rollout extras and — once the reward functions have run —
every reward component. Rewards arrive after the rollout, so records wait in memory until all
wrapped reward functions have scored them (or until :meth:`RolloutLog.flush`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RecordingReward", "RolloutLog"]


class RolloutLog:
    def __init__(self, path: str | Path, num_rewards: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.num_rewards = num_rewards
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, rollout_id: str, record: dict[str, Any]) -> None:
        record = {"rollout_id": rollout_id, **record, "rewards": {}}
        with self._lock:
            if self.num_rewards == 0:
                self._write([record])
            else:
                self._pending[rollout_id] = record

    def add_reward(self, rollout_id: str, name: str, value: float | None) -> None:
        with self._lock:
            record = self._pending.get(rollout_id)
            if record is None:
                return
            record["rewards"][name] = value
            if len(record["rewards"]) >= self.num_rewards:
                self._write([self._pending.pop(rollout_id)])

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._write(list(self._pending.values()))
                self._pending.clear()

    def _write(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


class RecordingReward:
    """Wraps a reward function so its per-row values also go to the rollout log.

    Keeps the wrapped function's ``__name__`` (TRL's metric key) and behaviour; it only reads the
    ``rollout_id`` column the ssrl-trl rollout adds.
    """

    def __init__(self, func: Callable[..., list[float | None]], log: RolloutLog) -> None:
        self.func, self.log = func, log
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, *args, **kwargs):
        values = self.func(*args, **kwargs)
        ids = kwargs.get("rollout_id")
        if ids is not None:
            for rid, value in zip(ids, values, strict=False):
                self.log.add_reward(rid, self.__name__, None if value is None else float(value))
        return values
