"""Environment kinds by name: the registry a recipe's ``environment.kind`` names.

A kind is a pydantic model of its options (validated with the recipe, so a typo fails before any
weights load) and a function that builds the environment from those options and the run's
:class:`EnvironmentParts` (tag set, tokenizer, path resolver). A new kind is one module (the
environment class) plus one :func:`register_environment` call::

    class EchoOptions(EnvironmentOptions):
        prefix: str = "echo: "

    register_environment("echo", EchoOptions, lambda o, parts: EchoEnv(parts.tags, o.prefix))

Unknown kinds are errors that list the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..paths import resolve_path
from ..protocol import TagSet
from ..retrieval.factory import RetrieverSpec
from .base import Environment

__all__ = [
    "ENVIRONMENT_REGISTRY",
    "EnvironmentFactory",
    "EnvironmentKind",
    "EnvironmentOptions",
    "EnvironmentParts",
    "RetrievalOptions",
    "SelfSearchOptions",
    "environment_kind",
    "environment_kinds",
    "environment_options",
    "register_environment",
]


class EnvironmentOptions(BaseModel):
    """Base of a kind's options: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


@dataclass(frozen=True)
class EnvironmentParts:
    """What every environment may be built from besides its own options."""

    tags: TagSet
    tokenizer: Any
    #: Resolves a path written in the recipe (relative to the working directory or the recipe).
    resolve: Callable[[str | None], str | None] = lambda p: p


@dataclass(frozen=True)
class EnvironmentKind:
    name: str
    options: type[EnvironmentOptions]
    build: Callable[[Any, EnvironmentParts], Environment]


#: name -> kind; add to it with :func:`register_environment`.
ENVIRONMENT_REGISTRY: dict[str, EnvironmentKind] = {}


def register_environment(
    name: str, options: type[EnvironmentOptions], build: Callable[[Any, EnvironmentParts], Environment]
) -> None:
    """Make kind ``name`` available to recipes (``environment: {kind: name, ...options}``)."""
    ENVIRONMENT_REGISTRY[name] = EnvironmentKind(name, options, build)


def environment_kinds() -> list[str]:
    return sorted(ENVIRONMENT_REGISTRY)


def environment_kind(name: str) -> EnvironmentKind:
    if name not in ENVIRONMENT_REGISTRY:
        raise ValueError(f"unknown environment kind {name!r}; known kinds: {', '.join(environment_kinds())}")
    return ENVIRONMENT_REGISTRY[name]


def environment_options(kind: str, values: dict[str, Any]) -> EnvironmentOptions:
    """Kind ``kind``'s validated options; ``ValueError`` names each bad key as ``environment.<key>``."""
    model = environment_kind(kind).options
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(["environment", *map(str, err["loc"])])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {key!r} for environment kind {kind!r}")
            else:
                ctx = err.get("ctx") or {}
                message = str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
                problems.append(f"{key}: {message}")
        raise ValueError("; ".join(problems)) from None


class EnvironmentFactory:
    """``tokenizer -> Environment`` for a recipe's environment, picklable (the rollout builds the
    environment with the trainer's tokenizer at the first rollout). Building late matters for
    retrievers: bm25s imports numba when it is installed, and vLLM's CPU build fails to start once
    numba's llvmlite wrappers are loaded, so the index opens after the trainer's engine exists."""

    def __init__(
        self, kind: str, options: EnvironmentOptions, tags: TagSet, base_dir: str | None = None
    ) -> None:
        self.kind, self.options, self.tags, self.base_dir = kind, options, tags, base_dir

    def resolve(self, path: str | None) -> str | None:
        return resolve_path(path, self.base_dir)

    def __call__(self, tokenizer: Any) -> Environment:
        parts = EnvironmentParts(self.tags, tokenizer, self.resolve)
        return environment_kind(self.kind).build(self.options, parts)


# -- the built-in kinds ----------------------------------------------------------------------------
class SelfSearchOptions(EnvironmentOptions):
    mask_tags: bool = Field(True, description="also mask the information tags themselves")


class RetrievalOptions(EnvironmentOptions):
    topk: int = Field(3, ge=1, le=50, description="documents per search")
    retriever: RetrieverSpec | None = None
    max_consecutive_failures: int = Field(
        20, ge=1, description="retriever failures in a row that stop the run"
    )

    @model_validator(mode="after")
    def _needs_retriever(self) -> RetrievalOptions:
        if self.retriever is None:
            raise ValueError("environment kind 'retrieval' needs a retriever section")
        return self


def _self_search(options: SelfSearchOptions, parts: EnvironmentParts) -> Environment:
    from .self_search import SelfSearchEnv

    return SelfSearchEnv(parts.tags, mask_tags=options.mask_tags)


def _retrieval(options: RetrievalOptions, parts: EnvironmentParts) -> Environment:
    from .retrieval import RetrievalEnv

    return RetrievalEnv(
        options.retriever.build(parts.resolve),  # type: ignore[union-attr]
        parts.tokenizer,
        parts.tags,
        topk=options.topk,
        max_consecutive_failures=options.max_consecutive_failures,
    )


register_environment("self_search", SelfSearchOptions, _self_search)
register_environment("retrieval", RetrievalOptions, _retrieval)

# Kinds that live in their own module register themselves when it is imported.
from . import parallel_retrieval  # noqa: E402, F401  (kind "parallel_retrieval")
