"""The rollout engine: one loop for all three methods.

Each episode is a small state machine — generate a turn until a stop string or a budget, parse
the action, ask the environment, append its reply's token ids, repeat — and the engine advances
all live episodes together: every call to the backend carries whichever episodes are waiting
for the model, whatever their turn, and every call to the environment carries whichever are
waiting for a reply. With a backend that can take one request at a time (``agenerate``: the
vLLM engine or server), :meth:`RolloutEngine.run` goes further and runs every episode as its own
task: an episode sends its next turn as soon as its observation is ready, while others are still
decoding or searching, so neither a slow retrieval nor a long turn holds the others back
(``schedule="independent"``, the default there; ``"batched"`` keeps the lock-step loop).

SSRL (single pass, self-written information masked), Search-R1 and R1-Searcher (retrieval,
inserted documents masked) differ only in the environment they are given: the engine asks it
whether it replies to a turn's action and for the replies (:class:`~ssrl_trl.environments.Environment`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from ..budgets import Budgets
from ..detok import token_texts
from ..environments.base import Environment
from ..protocol import Action
from ..trajectory import Observation, Trajectory
from .backends import Backend, GenRequest, SamplingConfig

__all__ = ["RolloutEngine", "RolloutStats", "run_coroutine"]

logger = logging.getLogger(__name__)


@dataclass
class RolloutStats:
    """What one :meth:`RolloutEngine.run` cost, for logging.

    Under the independent scheduler generation and environment calls overlap: ``generation_s``
    is then the wall time of the whole run and ``environment_s`` the summed time of the
    (concurrent) environment calls."""

    generation_s: float = 0.0
    environment_s: float = 0.0
    backend_calls: int = 0
    environment_calls: int = 0
    generated_tokens: int = 0


@dataclass
class _Episode:
    traj: Trajectory
    turn_start: int = 0  # completion index where the current model text (since the last reply) starts
    turn_text: str = ""
    pending: Action | None = None


class RolloutEngine:
    def __init__(
        self,
        backend: Backend,
        env: Environment,
        tokenizer,
        budgets: Budgets | None = None,
        *,
        eos_token_id: int | None = None,
        append_eos_after_answer: bool = True,
        response_prefix: str | None = None,
        schedule: Literal["auto", "independent", "batched"] = "auto",
        max_concurrent_env_calls: int = 16,
    ) -> None:
        self.backend, self.env, self.tokenizer = backend, env, tokenizer
        if schedule not in ("auto", "independent", "batched"):
            raise ValueError(f"schedule must be 'auto', 'independent' or 'batched', got {schedule!r}")
        can_stream = callable(getattr(backend, "agenerate", None))
        if schedule == "independent" and not can_stream:
            raise ValueError(f"{type(backend).__name__} has no agenerate(): use schedule='batched'")
        if schedule == "auto":
            schedule = "independent" if can_stream else "batched"
        self.schedule = schedule
        self.max_concurrent_env_calls = max(1, int(max_concurrent_env_calls))
        # Forced opening of every answer (e.g. "<think>"): inserted, so masked, but part of the
        # text the rewards and the parser see — a small model then starts inside the format.
        self.prefix_ids = (
            tokenizer.encode(response_prefix, add_special_tokens=False) if response_prefix else []
        )
        self.budgets = budgets or Budgets()
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.append_eos_after_answer = append_eos_after_answer

    def run(
        self, prompt_ids: Sequence[list[int]], sampling: SamplingConfig | None = None
    ) -> tuple[list[Trajectory], RolloutStats]:
        sampling = sampling or SamplingConfig()
        episodes = [_Episode(Trajectory(prompt_ids=list(p))) for p in prompt_ids]
        for ep in episodes:
            ep.traj.append(list(self.prefix_ids), "prefix")
        stats = RolloutStats()
        if self.schedule == "independent":
            run_coroutine(self._run_independent(episodes, sampling, stats))
        else:
            self._run_batched(episodes, sampling, stats)
        trajectories = [ep.traj for ep in episodes]
        for traj in trajectories:
            traj.validate(self.budgets.max_completion_tokens)
        return trajectories, stats

    def _run_batched(self, episodes: list[_Episode], sampling: SamplingConfig, stats: RolloutStats) -> None:
        live = list(episodes)
        while live:
            self._generate(live, sampling, stats)
            waiting = [ep for ep in live if ep.traj.stop_reason is None and ep.pending is not None]
            if waiting:
                self._respond(waiting, stats)
            live = [ep for ep in live if ep.traj.stop_reason is None]

    async def _run_independent(
        self, episodes: list[_Episode], sampling: SamplingConfig, stats: RolloutStats
    ) -> None:
        # Own pool: asyncio's default one has min(32, cpus + 4) threads, which on a small machine
        # would cap concurrent retrievals below max_concurrent_env_calls.
        pool = ThreadPoolExecutor(self.max_concurrent_env_calls, thread_name_prefix="ssrl-env")
        loop = asyncio.get_running_loop()
        start = time.perf_counter()

        async def episode(ep: _Episode) -> None:
            while ep.traj.stop_reason is None:
                res = await self.backend.agenerate(self._request(ep), sampling)  # type: ignore[attr-defined]
                stats.backend_calls += 1
                stats.generated_tokens += len(res.token_ids)
                self._after_turn(ep, res)
                if ep.traj.stop_reason is None and ep.pending is not None:
                    t0 = time.perf_counter()
                    reply = await loop.run_in_executor(pool, self._reply, ep)
                    stats.environment_s += time.perf_counter() - t0
                    stats.environment_calls += ep.pending.kind == "search"
                    self._apply_reply(ep, reply)

        try:
            results = await asyncio.gather(*(episode(ep) for ep in episodes), return_exceptions=True)
        finally:
            pool.shutdown(wait=False)
            if callable(aclose := getattr(self.backend, "aclose", None)):
                await aclose()
        stats.generation_s = time.perf_counter() - start
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    # -- model turns ---------------------------------------------------------------------------
    def _remaining(self, traj: Trajectory) -> int:
        return self.budgets.max_completion_tokens - len(traj.completion_ids)

    def _request(self, ep: _Episode) -> GenRequest:
        last_turn = ep.traj.turns + 1 >= self.budgets.max_turns
        budget = min(self.budgets.max_tokens_per_turn, self._remaining(ep.traj))
        return GenRequest(
            ep.traj.prompt_ids + ep.traj.completion_ids, budget, tuple(self.env.stop_strings(last_turn))
        )

    def _generate(self, live: list[_Episode], sampling: SamplingConfig, stats: RolloutStats) -> None:
        requests = [self._request(ep) for ep in live]
        start = time.perf_counter()
        results = self.backend.generate(requests, sampling)
        stats.generation_s += time.perf_counter() - start
        stats.backend_calls += 1
        for ep, res in zip(live, results, strict=True):
            self._after_turn(ep, res)
            stats.generated_tokens += len(res.token_ids)

    def _after_turn(self, ep: _Episode, res) -> None:
        traj = ep.traj
        traj.append(list(res.token_ids), "model", list(res.logprobs))
        traj.turns += 1
        texts = token_texts(self.tokenizer, traj.completion_ids[ep.turn_start :])
        # The hook sees the whole model text since the last reply (tags split across turns included).
        self.env.on_model_turn(traj, ep.turn_start, texts)
        ep.turn_text = texts.text
        action = self.env.parse(ep.turn_text)
        ep.pending = None
        turns_left = traj.turns < self.budgets.max_turns
        replied = turns_left and action.kind != "answer" and self.env.replies_to(action)
        if action.kind == "answer":
            traj.answer = action.content
            self._finish(ep, "answer")
        elif self._remaining(traj) <= 0:
            self._finish(ep, "max_completion_tokens")
        elif replied and action.kind != "invalid":
            ep.pending = action
        elif turns_left and res.finish_reason == "length":
            pass  # the turn ran out of tokens mid-thought: the model continues in its next turn
        elif replied:
            ep.pending = action  # invalid: the environment may send a corrective message
        elif res.finish_reason == "length":
            self._finish(ep, "max_turns")
        else:
            self._finish(ep, "no_answer")  # the model ended its turn without answering

    def _finish(self, ep: _Episode, reason) -> None:
        traj = ep.traj
        traj.stop_reason = reason
        ep.pending = None
        if (
            reason == "answer"
            and self.append_eos_after_answer
            and self.eos_token_id is not None
            and traj.completion_ids[-1:] != [self.eos_token_id]
            and self._remaining(traj) > 0
        ):
            traj.append([self.eos_token_id], "eos")

    # -- environment replies -------------------------------------------------------------------
    def _obs_budget(self, traj: Trajectory) -> int:
        return min(self.budgets.max_obs_tokens, self._remaining(traj) - self.budgets.answer_reserve_tokens)

    def _respond(self, waiting: list[_Episode], stats: RolloutStats) -> None:
        """Every waiting episode's reply from one environment call (its searches batched)."""
        start = time.perf_counter()
        for ep in waiting:
            ep.traj.invalid_actions += ep.pending.kind == "invalid"
        replies = self.env.respond(
            [ep.pending for ep in waiting], [self._obs_budget(ep.traj) for ep in waiting]
        )
        stats.environment_calls += any(ep.pending.kind == "search" for ep in waiting)
        stats.environment_s += time.perf_counter() - start
        for ep, obs in zip(waiting, replies, strict=True):
            self._apply_reply(ep, obs)

    def _reply(self, ep: _Episode) -> Observation | None:
        """The environment's reply to one episode's pending action (the independent schedule)."""
        ep.traj.invalid_actions += ep.pending.kind == "invalid"
        return self.env.respond([ep.pending], [self._obs_budget(ep.traj)])[0]

    def _apply_reply(self, ep: _Episode, obs: Observation | None) -> None:
        action, traj = ep.pending, ep.traj
        if action.kind == "search":
            traj.num_searches += 1
            traj.queries.append(action.content)
        if obs is None:  # not even an empty reply fits next to the answer reserve
            self._finish(ep, "max_completion_tokens")
            return
        if obs.kind == "error":
            traj.retriever_errors += 1
        if obs.kind in ("observation", "error"):
            traj.doc_ids.append(list(obs.doc_ids))
        traj.append(obs.ids, obs.kind)
        traj.observation_tokens += len(obs.ids)
        ep.pending = None
        ep.turn_start = len(traj.completion_ids)


def run_coroutine(coro):
    """Run ``coro`` to completion from synchronous code and return its result (TRL calls
    ``rollout_func`` synchronously), in a helper thread when this thread already runs an event
    loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="ssrl-rollout")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")
