"""Say at start how many processes train, and catch the launch that silently runs one.

``accelerate launch --cpu --num_processes 2`` (or ``--num_processes 2`` without GPUs) goes through
accelerate's *simple* launcher: it starts one process, sets ``MASTER_ADDR``/``MASTER_PORT`` for a
process group that never forms, and the run trains alone with no error. CPU data parallel needs
the torchrun path (``--multi_gpu``, or ``recipes/accelerate/cpu_ddp.yaml``), where each rank gets
``WORLD_SIZE``/``RANK`` and joins a gloo group. What the launcher meant is read from the variables
it sets (accelerate 1.15):

- torchrun (accelerate's multi-GPU / DeepSpeed / FSDP launchers) and MPI set the world size
  (``WORLD_SIZE``, ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ``MV2_COMM_WORLD_SIZE``);
- only the simple launcher sets ``ACCELERATE_USE_CPU`` (to ``True`` or ``False``), and it sets
  ``MASTER_PORT`` only when more than one process was asked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["World", "announce_world", "launch_warning"]

_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_CPU_DDP = "accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml -m ssrl_trl.train --config ..."


@dataclass(frozen=True)
class World:
    """The process group as this rank sees it."""

    size: int
    rank: int
    local_rank: int
    local_size: int | None
    device: str
    kind: str
    backend: str | None

    @classmethod
    def of(cls, accelerator: Any, env: Mapping[str, str] | None = None) -> World:
        env = os.environ if env is None else env
        size = int(accelerator.num_processes)
        local_size = _int(env.get("LOCAL_WORLD_SIZE")) or (1 if size == 1 else None)
        return cls(
            size=size,
            rank=int(accelerator.process_index),
            local_rank=int(accelerator.local_process_index),
            local_size=local_size,
            device=str(accelerator.device),
            kind=str(accelerator.distributed_type).split(".")[-1],
            backend=getattr(accelerator.state, "backend", None),
        )

    def line(self) -> str:
        """The main process's line: world size, process count, and its own device."""
        how = "not distributed" if self.size == 1 and self.kind == "NO" else self.kind
        how = how if self.backend is None else f"{how}, {self.backend}"
        here = "?" if self.local_size is None else self.local_size
        return (
            f"[ssrl-trl] world size {self.size} ({how}): {self.size} process"
            f"{'es' if self.size > 1 else ''}, {here} on this machine; rank {self.rank} on {self.device}"
        )

    def rank_line(self) -> str:
        return f"[ssrl-trl] rank {self.rank} of {self.size} (local {self.local_rank}) on {self.device}"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def launch_warning(world_size: int, env: Mapping[str, str] | None = None) -> str | None:
    """Why the launch probably did not start what was asked, or ``None`` when it did."""
    env = os.environ if env is None else env
    requested = max((_int(env.get(k)) or 0 for k in _SIZE_VARS), default=0)
    if requested > world_size:
        return (
            f"the launcher started {requested} processes but this one trains alone (world size "
            f"{world_size}): every process trains its own copy and writes to the same output_dir. "
            "On a machine without GPUs the ranks need grpo.use_cpu: true (the default there) to form "
            f"a gloo group; see `{_CPU_DDP}`."
        )
    if requested == 0 and world_size == 1 and "ACCELERATE_USE_CPU" in env and env.get("MASTER_PORT"):
        return (
            "accelerate was asked for more than one process, but only this one is running (world "
            "size 1). `accelerate launch --cpu --num_processes N` (or --num_processes N without "
            "GPUs) starts a single process. For data parallel on CPU use "
            f"`{_CPU_DDP}` (or `accelerate launch --multi_gpu --num_processes N ...`)."
        )
    return None


def announce_world(accelerator: Any, env: Mapping[str, str] | None = None) -> World:
    """Print the world line (main process) or the rank line (others), and the launch warning.

    Printed rather than logged: a rank's line must show in the launcher's output whatever the
    logging level, and the test of a 2-rank run reads it there.
    """
    world = World.of(accelerator, env)
    print(world.line() if world.rank == 0 else world.rank_line(), flush=True)
    warning = launch_warning(world.size, env)
    if warning is not None:
        print(f"[ssrl-trl] WARNING: {warning}", file=sys.stderr, flush=True)
    return world
