"""Which machine a run ran on, recorded next to its figures (``cost.json``, ``summary.json``).

A seed fixes a CPU run only on one kind of CPU: sampled rollouts depend on the instruction set
oneDNN picks for bf16 matmuls (AMX, AVX512-BF16, AVX2), so two machines running one command can
train differently (docs/learning.md, "Robust to the machine"). Recording the CPU model, the
instruction-set flags that matter and the oneDNN override makes that visible in every run's
output instead of leaving it to be guessed afterwards. Nothing here raises: a field that cannot
be read is ``None``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "describe_machine", "read_cpuinfo"]

#: /proc/cpuinfo flags that change which kernels oneDNN uses for bf16 and fp32 matmuls
ISA_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


def read_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, family/model numbers and the :data:`ISA_FLAGS` present, from the first
    processor block of a ``/proc/cpuinfo`` text (x86 layout; other layouts give ``None`` fields)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor block is enough: all cores of a host are alike
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name"),
        "cpu_family": fields.get("cpu family"),
        "cpu_model_number": fields.get("model"),
        "isa_flags": [f for f in ISA_FLAGS if f in flags] if flags else None,
    }


def describe_machine(cpuinfo_path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """A JSON-ready description of this host: CPU (from ``cpuinfo_path`` where it exists),
    logical CPUs, torch's version and thread count, ``ONEDNN_MAX_CPU_ISA`` and the GPU name."""
    try:
        info = read_cpuinfo(Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        info = read_cpuinfo("")
    if info["cpu_model"] is None:
        info["cpu_model"] = platform.processor() or None
    out: dict[str, Any] = {
        **info,
        "machine": platform.machine() or None,
        "logical_cpus": os.cpu_count(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "torch": None,
        "torch_threads": None,
        "gpu": None,
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a description must never stop a run
        pass
    return out
