"""The one seam with TRL: ``GRPOTrainer(rollout_func=SearchRollout(...))``.

TRL calls ``rollout_func(prompts, trainer)`` with the prompts of this rank (already repeated
``num_generations`` times) and expects ``prompt_ids``, ``completion_ids``, ``logprobs`` and
optionally ``env_mask``; every other key reaches the reward functions as a keyword argument.
TRL validates none of the lengths (a short mask is padded with 1s, i.e. trains on inserted
text), so every trajectory is checked here before it is handed over.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

from ..budgets import Budgets
from ..environments.base import Environment
from ..trajectory import Trajectory, TrajectoryError
from .backends import Backend, SamplingConfig
from .engine import RolloutEngine, RolloutStats
from .hf_backend import HFBackend
from .rollout_log import RolloutLog

__all__ = [
    "BackendKind",
    "SamplingCopy",
    "SearchRollout",
    "backend_kind",
    "encode_prompt",
    "sampling_from_args",
]

BackendKind = Literal["transformers", "vllm_colocate", "vllm_server"]


def backend_kind(args: Any) -> BackendKind:
    """The generator a ``GRPOConfig`` asks for — the one place that reads it:

    * ``use_vllm=False`` — the trainer's own model through ``transformers``;
    * ``vllm_mode="colocate"`` — this rank's in-process vLLM engine (``trainer.vllm_generation.llm``);
    * ``vllm_mode="server"`` — a per-rank client of the trainer's vLLM server.

    Raises ``NotImplementedError`` for settings a multi-turn rollout cannot honour, so a recipe
    with them fails before any model loads.
    """
    if not getattr(args, "use_vllm", False):
        return "transformers"
    if getattr(args, "vllm_mode", "colocate") == "server":
        return "vllm_server"
    if int(getattr(args, "vllm_tensor_parallel_size", 1) or 1) > 1:
        raise NotImplementedError(
            "multi-turn rollouts with vllm_tensor_parallel_size > 1 in colocate mode would need every rank of a "
            "TP group to step one shared engine in lock-step; use tensor_parallel_size=1 per rank or server mode"
        )
    if getattr(args, "vllm_enable_sleep_mode", False):
        # TRL tracks whether the engine's weights are asleep in a private attribute; a rollout that
        # sleeps the engine itself would have to write it. Not supported rather than patched.
        raise NotImplementedError(
            "grpo.vllm_enable_sleep_mode is not supported with the ssrl-trl rollout (a multi-turn loop "
            "would have to re-sleep TRL's colocated engine behind its back); leave it false"
        )
    return "vllm_colocate"


def encode_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids of one TRL prompt: chat messages get the chat template with the generation
    prompt; a plain string is encoded as is (it is assumed to be already templated)."""
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt, add_special_tokens=False))
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids)
    raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def sampling_from_args(args: Any) -> SamplingConfig:
    """TRL's GRPOConfig sampling fields, so a recipe sets them where TRL users expect."""
    return SamplingConfig(
        temperature=float(getattr(args, "temperature", 1.0) or 0.0),
        top_p=float(getattr(args, "top_p", 1.0) or 1.0),
        top_k=int(getattr(args, "top_k", 0) or 0),
        min_p=float(getattr(args, "min_p", 0.0) or 0.0),
        repetition_penalty=float(getattr(args, "repetition_penalty", 1.0) or 1.0),
    )


class SamplingCopy:
    """A copy of the policy in another dtype for ``transformers`` sampling (e.g. bfloat16 next to
    float32 master weights on a CPU, where bf16 decoding is ~2x faster and autocast is slower
    than fp32). Its parameters are refreshed from the policy whenever the optimiser has stepped;
    buffers (rotary frequencies) keep their precision. ``"auto"`` samples with the policy itself.
    """

    def __init__(self, dtype: str = "auto") -> None:
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"sampling dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        self.dtype = dtype
        self._copy: Any = None
        self._step: int | None = None

    def model_for(self, model: Any, step: int) -> Any:
        import copy

        import torch

        if self.dtype == "auto":
            return model
        target = getattr(torch, self.dtype)
        if all(p.dtype == target for p in model.parameters()):
            return model
        with torch.no_grad():
            if self._copy is None:
                self._copy = copy.deepcopy(model).eval()
                for p in self._copy.parameters():
                    p.data = p.data.to(target)
                    p.requires_grad_(False)
            elif self._step != step:
                for dst, src in zip(self._copy.parameters(), model.parameters(), strict=True):
                    dst.copy_(src)
        self._step = step
        return self._copy


class SearchRollout:
    """A picklable ``rollout_func`` running the ssrl-trl engine.

    ``env_factory(tokenizer)`` builds the environment once (the tokenizer is the trainer's).
    Without a ``backend`` the generator follows the trainer's configuration:

    * ``use_vllm=False`` — the trainer's own model through ``transformers``, inside TRL's
      ``unwrap_model_for_generation`` (DDP, ZeRO-3 parameter gathering, gradient-checkpointing off);
    * ``vllm_mode="colocate"`` — this rank's in-process vLLM engine (``trainer.vllm_generation.llm``);
    * ``vllm_mode="server"`` — a per-rank client of the trainer's vLLM server.

    In both vLLM modes TRL pushes the policy weights to the engine before calling us whenever the
    optimiser has stepped since the last push (``GRPOTrainer._generate``), and resets the prefix
    cache; the weight-sync test in ``tests_vllm`` checks that the engine's log-probs move after a
    step. Episodes advance independently on vLLM (``schedule``, see :class:`RolloutEngine`).
    """

    def __init__(
        self,
        env_factory: Callable[[Any], Environment],
        budgets: Budgets | None = None,
        *,
        backend: Backend | None = None,
        log: RolloutLog | None = None,
        sampling_batch_size: int = 64,
        response_prefix: str | None = None,
        schedule: str = "auto",
        server_concurrency: int = 64,
        max_concurrent_env_calls: int = 16,
        sampling_dtype: str = "auto",
        transformers_loop: str = "own",
    ) -> None:
        self.env_factory, self.budgets, self.backend, self.log = (
            env_factory,
            budgets or Budgets(),
            backend,
            log,
        )
        self.sampling_batch_size = sampling_batch_size
        self.response_prefix = response_prefix
        self.schedule, self.server_concurrency = schedule, server_concurrency
        self.max_concurrent_env_calls = max_concurrent_env_calls
        self.sampling_copy = SamplingCopy(sampling_dtype)
        if transformers_loop not in ("own", "generate"):
            raise ValueError(f"transformers_loop must be 'own' or 'generate', got {transformers_loop!r}")
        self.transformers_loop = transformers_loop
        self._env: Environment | None = None
        self._server: Any = None
        #: The schedule the engine resolved to on the last call ("independent" on vLLM backends).
        self.last_schedule: str | None = None
        #: Per-call metrics (lists of floats), drained by the metrics callback into TRL's logs.
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.__name__ = "ssrl_trl_rollout"

    def environment(self, tokenizer: Any) -> Environment:
        if self._env is None:
            self._env = self.env_factory(tokenizer)
        return self._env

    def __call__(self, prompts: list, trainer: Any) -> dict[str, list]:
        tokenizer = trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        env = self.environment(tokenizer)
        max_len = getattr(trainer.args, "max_completion_length", None)
        budgets = self.budgets
        if max_len is not None and max_len < budgets.max_completion_tokens:
            budgets = budgets.model_copy(update={"max_completion_tokens": int(max_len)})
        prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
        sampling = sampling_from_args(trainer.args)
        start = time.perf_counter()
        with self._backend(trainer, tokenizer) as backend:
            engine = RolloutEngine(
                backend,
                env,
                tokenizer,
                budgets,
                response_prefix=self.response_prefix,
                schedule=self.schedule,
                max_concurrent_env_calls=self.max_concurrent_env_calls,
            )
            trajectories, stats = engine.run(prompt_ids, sampling)
        self.last_schedule = engine.schedule
        self._record_metrics(trajectories, stats, time.perf_counter() - start)
        step = int(getattr(getattr(trainer, "state", None), "global_step", 0) or 0)
        return self.to_trl(trajectories, tokenizer, prompts, step)

    @contextlib.contextmanager
    def _backend(self, trainer: Any, tokenizer: Any):
        if self.backend is not None:
            yield self.backend
            return
        kind = backend_kind(trainer.args)
        if kind == "vllm_server":
            yield self._server_backend(trainer, tokenizer)
        elif kind == "vllm_colocate":
            from .vllm_backend import VLLMBackend

            yield VLLMBackend(trainer.vllm_generation.llm, tokenizer)
        else:
            with self._transformers_backend(trainer, tokenizer) as backend:
                yield backend

    @contextlib.contextmanager
    def _transformers_backend(self, trainer: Any, tokenizer: Any):
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=getattr(trainer.args, "ds3_gather_for_generation", True),
            gradient_checkpointing_kwargs=getattr(trainer.args, "gradient_checkpointing_kwargs", None),
        ) as model:
            # No autocast here: it re-casts every weight at every decoding step, which made CPU
            # sampling ~3x slower in our measurements. Without vLLM, TRL recomputes the log-probs
            # it trains on, so sampling precision does not enter the loss.
            step = int(getattr(trainer.state, "global_step", 0) or 0)
            if self.sampling_copy.dtype != "auto" and getattr(trainer, "is_deepspeed_enabled", False):
                raise ValueError(
                    "rollout.sampling_dtype needs the whole model on one rank: not with DeepSpeed"
                )
            sampler = self.sampling_copy.model_for(model, step)
            yield HFBackend(
                sampler,
                tokenizer,
                batch_size=self.sampling_batch_size,
                own_loop=self.transformers_loop == "own",
            )

    def _server_backend(self, trainer: Any, tokenizer: Any) -> Backend:
        # TRL's main process pushes the weights before rollout_func; the other ranks must not
        # generate from the server before it has finished.
        trainer.accelerator.wait_for_everyone()
        if self._server is None:
            from .vllm_server import VLLMServerBackend

            args = trainer.args
            base_url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
            self._server = VLLMServerBackend(
                base_url, tokenizer, max_concurrency=self.server_concurrency, timeout=args.vllm_server_timeout
            )
        return self._server

    def to_trl(
        self, trajectories: list[Trajectory], tokenizer: Any, prompts: list, step: int
    ) -> dict[str, list]:
        """Validate and convert to TRL's dict of per-row lists (extras become reward kwargs)."""
        out: dict[str, list] = defaultdict(list)
        for i, traj in enumerate(trajectories):
            try:
                traj.validate()
            except TrajectoryError as exc:
                raise TrajectoryError(f"rollout row {i}: {exc}") from exc
            rid = uuid.uuid4().hex
            out["prompt_ids"].append(traj.prompt_ids)
            out["completion_ids"].append(traj.completion_ids)
            out["logprobs"].append(traj.logprobs)
            out["env_mask"].append(traj.env_mask)
            out["rollout_id"].append(rid)
            for key, value in traj.extras().items():
                out[key].append(value)
            if self.log is not None:
                self.log.add(rid, self._record(traj, tokenizer, prompts[i], step))
        return dict(out)

    @staticmethod
    def _record(traj: Trajectory, tokenizer: Any, prompt: Any, step: int) -> dict[str, Any]:
        segments = [
            {
                "kind": seg.kind,
                "start": seg.start,
                "end": seg.end,
                "text": tokenizer.decode(traj.completion_ids[seg.start : seg.end], skip_special_tokens=False),
                "masked_tokens": seg.end - seg.start - sum(traj.env_mask[seg.start : seg.end]),
            }
            for seg in traj.segments
        ]
        question = prompt[-1]["content"] if isinstance(prompt, list) and prompt else prompt
        return {
            "step": step,
            "prompt": question,
            "segments": segments,
            "completion_ids": traj.completion_ids,
            "env_mask": traj.env_mask,
            "answer": traj.answer,
            **traj.extras(),
        }

    def _record_metrics(self, trajectories: list[Trajectory], stats: RolloutStats, seconds: float) -> None:
        n = max(len(trajectories), 1)
        m = self.metrics
        m["rollout/searches_per_trajectory"].append(sum(t.num_searches for t in trajectories) / n)
        m["rollout/turns"].append(sum(t.turns for t in trajectories) / n)
        m["rollout/masked_fraction"].append(sum(t.masked_fraction for t in trajectories) / n)
        m["rollout/observation_tokens"].append(sum(t.observation_tokens for t in trajectories) / n)
        m["rollout/invalid_actions"].append(sum(t.invalid_actions for t in trajectories) / n)
        m["rollout/retriever_errors"].append(float(sum(t.retriever_errors for t in trajectories)))
        m["rollout/answered_fraction"].append(sum(t.stop_reason == "answer" for t in trajectories) / n)
        m["rollout/truncated_fraction"].append(sum(t.truncated for t in trajectories) / n)
        m["rollout/seconds"].append(seconds)
        m["rollout/generation_seconds"].append(stats.generation_s)
        m["rollout/environment_seconds"].append(stats.environment_s)
        m["rollout/tokens_per_second"].append(stats.generated_tokens / seconds if seconds > 0 else 0.0)

    def pop_metrics(self) -> dict[str, float]:
        """Means of the metrics recorded since the last call, then reset."""
        out = {k: sum(v) / len(v) for k, v in self.metrics.items() if v}
        self.metrics.clear()
        return out
