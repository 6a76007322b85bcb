"""Environments: who answers a model turn. Self-search (SSRL) answers nothing — the model writes
its own information, which is masked; retrieval (Search-R1, R1-Searcher) inserts documents. Both
implement :class:`Environment`; recipes name them through :mod:`.registry`."""

from .base import Environment, Observation
from .retrieval import RetrievalEnv
from .self_search import SelfSearchEnv

__all__ = ["Environment", "Observation", "RetrievalEnv", "SelfSearchEnv"]
