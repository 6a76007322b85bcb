"""The rollout engine (episodes × environment × backend) and its TRL adapter."""

from ..budgets import Budgets
from ..trajectory import Segment, Trajectory, TrajectoryError
from .backends import Backend, GenRequest, GenResult, SamplingConfig, ScriptedBackend
from .engine import RolloutEngine, RolloutStats
from .hf_backend import HFBackend
from .trl_adapter import SearchRollout, backend_kind, encode_prompt
from .vllm_backend import VLLMBackend
from .vllm_server import VLLMServerBackend, VLLMServerError

__all__ = [
    "Backend",
    "Budgets",
    "GenRequest",
    "GenResult",
    "HFBackend",
    "RolloutEngine",
    "RolloutStats",
    "SamplingConfig",
    "ScriptedBackend",
    "SearchRollout",
    "Segment",
    "Trajectory",
    "TrajectoryError",
    "VLLMBackend",
    "VLLMServerBackend",
    "VLLMServerError",
    "backend_kind",
    "encode_prompt",
]
