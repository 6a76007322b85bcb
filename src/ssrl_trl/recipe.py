"""A recipe file is the whole experiment: model, data, method, environment, budgets, rewards and
TRL's ``GRPOConfig`` — read with ``yaml.safe_load`` and validated before anything heavy loads.

Every section rejects unknown keys, naming the key and the allowed ones; the ``grpo:`` section
takes ``GRPOConfig`` field names unchanged (a misspelt one is an error with a suggestion, unlike
``trl grpo`` which silently ignores it). Relative paths are resolved against the directory the
command runs in, then against the recipe's own directory, so recipes work from the repo root.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .budgets import Budgets
from .paths import resolve_path

if TYPE_CHECKING:
    from .protocol import TagSet

__all__ = ["Recipe", "RecipeError", "load_recipe", "apply_overrides", "resolve_dotted", "with_values"]


class RecipeError(ValueError):
    """A recipe is invalid; the message names the file, the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraSpec(_Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


class ModelSpec(_Section):
    name_or_path: str = Field(description="local folder or hub id")
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        None, description="path to a Jinja chat template replacing the tokenizer's"
    )
    attn_implementation: str | None = None
    lora: LoraSpec | None = None


class SourceSpec(_Section):
    path: str = Field(description="FlashRAG-style jsonl, parquet, or a datasets name (hf:owner/name)")
    name: str | None = Field(None, description="source name used in unique ids; defaults to the file stem")
    split: str = "train"
    weight: float = Field(1.0, gt=0)
    limit: int | None = Field(None, ge=1)


class DataSpec(_Section):
    train: list[SourceSpec]
    eval: list[SourceSpec] = []
    question_key: str = "question"
    answer_key: str = "golden_answers"
    id_key: str = "id"
    prompt_template: str = Field(
        "search_r1", description="built-in name (ssrl, search_r1, r1_searcher) or file"
    )
    system_prompt: str | None = None
    max_train_samples: int | None = Field(None, ge=1)
    overlap: Literal["error", "drop_from_train", "drop_from_eval"] = Field(
        "error", description="what to do with questions (same normalised text) in both train and eval"
    )
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if isinstance(value, str | dict):
            value = [value]
        return [{"path": v} if isinstance(v, str) else v for v in value]


class EnvironmentSpec(_Section):
    """``kind`` names a registered environment (:mod:`ssrl_trl.environments.registry`); the other
    keys are that kind's options, validated against its typed spec (``options``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    kind: str
    response_prefix: str | None = Field(
        None,
        description='text forced at the start of every completion (e.g. "<think>"), masked from the loss',
    )
    _options: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _kind_options(self) -> EnvironmentSpec:
        from .environments.registry import environment_options

        self._options = environment_options(self.kind, dict(self.model_extra or {}))
        return self

    @property
    def options(self) -> Any:
        """The kind's options, typed (e.g. ``RetrievalOptions``: topk, retriever, ...)."""
        return self._options


class RolloutSpec(_Section):
    schedule: Literal["auto", "independent", "batched"] = Field(
        "auto",
        description="independent: every episode advances on its own (vLLM); batched: lock-step turns",
    )
    server_concurrency: int = Field(64, ge=1, description="vLLM server mode: requests in flight per rank")
    max_concurrent_env_calls: int = Field(16, ge=1, description="independent schedule: retrievals at once")
    sampling_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="transformers sampling: a copy of the policy in this dtype (bfloat16 on CPU: ~2x faster decoding)",
    )
    sampling_batch_size: int = Field(64, ge=1, description="transformers sampling: rows decoded together")
    transformers_loop: Literal["own", "generate"] = Field(
        "own",
        description="transformers sampling: own decoding loop (shared prefill, KV reuse across turns) "
        "or model.generate (re-reads the history every turn)",
    )


class EvaluationSpec(_Section):
    heldout: bool = Field(
        True, description="evaluate data.eval before and after training (greedy) -> before_after.json"
    )
    every_steps: int = Field(
        0, ge=0, description="also evaluate every N optimizer steps (0: only before/after)"
    )
    limit: int | None = Field(None, ge=1, description="evaluate at most this many held-out questions")
    batch_size: int = Field(64, ge=1, description="episodes generated together")
    resamples: int = Field(10_000, ge=100, description="paired-bootstrap resamples for the 95% intervals")


class RewardSpec(_Section):
    path: str = Field(description="dotted path to a reward callable or a factory (with kwargs)")
    weight: float = 1.0
    kwargs: dict[str, Any] | None = None


class Recipe(_Section):
    method: Literal["ssrl", "search_r1", "r1_searcher", "autorefine"]
    model: ModelSpec
    data: DataSpec
    environment: EnvironmentSpec
    budgets: Budgets = Budgets()
    rollout: RolloutSpec = RolloutSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    tags: str | dict[str, Any] | None = Field(
        None, description="tag set name or mapping; default: the method's"
    )
    rewards: list[RewardSpec]
    rollout_log: bool = True
    health: dict[str, Any] = {}
    grpo: dict[str, Any] = {}
    #: Where the recipe file lives (set by load_recipe; used to resolve relative paths).
    base_dir: str | None = None

    @field_validator("rewards")
    @classmethod
    def _some_rewards(cls, value: list[RewardSpec]) -> list[RewardSpec]:
        if not value:
            raise ValueError("at least one reward is needed")
        return value

    @field_validator("budgets")
    @classmethod
    def _completion_cap_is_grpo(cls, value: Budgets) -> Budgets:
        if "max_completion_tokens" in value.model_fields_set:
            raise ValueError("set the completion cap as grpo.max_completion_length (TRL's name), not here")
        return value

    @model_validator(mode="after")
    def _tags_resolve(self) -> Recipe:
        try:
            self.tag_set()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tags: {exc}") from None
        return self

    def tag_set(self) -> TagSet:
        """The recipe's tag set: ``tags`` (a name or a mapping, which takes the format check and
        document style it does not name from the method's tags), else the method's."""
        from .protocol import get_tag_set

        return get_tag_set(self.tags if self.tags is not None else self.method, base=self.method)

    def path(self, value: str | None) -> str | None:
        """Resolve a relative path: as given if it exists from the working directory, else
        relative to the recipe file (:func:`~ssrl_trl.paths.resolve_path`)."""
        return resolve_path(value, self.base_dir)


def _grpo_fields() -> set[str]:
    import dataclasses

    from trl import GRPOConfig

    return {f.name for f in dataclasses.fields(GRPOConfig)}


def _check_grpo(grpo: dict[str, Any], where: str) -> None:
    fields = _grpo_fields()
    for key in grpo:
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(f"{where}: grpo.{key} is not a GRPOConfig field{suggestion}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-6`` as a string; every TRL user writes it that way."""
    return float(value) if isinstance(value, str) and _FLOAT.fullmatch(value.strip()) else value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key, {}), dict):
            raise RecipeError(f"--set {dotted}: {key} is not a section")
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides; values are parsed as YAML (``1e-6``, ``true``, ``[a, b]``),
    except that a ``grpo`` field meant to hold a string keeps the text as written
    (``--set grpo.save_strategy=no`` is the string ``"no"``, not YAML's boolean)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {key}: cannot parse value {raw!r}: {exc}") from exc
        if isinstance(value, bool) and key.startswith("grpo.") and _takes_string_not_bool(key[5:]):
            value = raw.strip()
        _set_dotted(data, key, _number(value))
    return data


def _takes_string_not_bool(field: str) -> bool:
    from .recipe_checks import _grpo_hints, _simple_types

    types_ = _simple_types(_grpo_hints().get(field)) if field in _grpo_hints() else None
    return bool(types_) and str in types_ and bool not in types_


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _format_validation(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid recipe"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key {loc!r}")
        elif err["type"] == "literal_error":
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        elif err["type"] == "value_error" and "error" in ctx:  # our own checks: their message as is
            lines.append(f"  {loc}: {ctx['error']}" if loc else f"  {ctx['error']}")
        else:
            lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> Recipe:
    """Read, override and validate a recipe. Raises :class:`RecipeError` with a readable message."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    data["base_dir"] = str(path.resolve().parent)
    if isinstance(data.get("grpo"), dict):
        data["grpo"] = {k: _number(v) for k, v in data["grpo"].items()}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation(exc, str(path))) from None
    _check_grpo(recipe.grpo, str(path))
    from .recipe_checks import check_before_load

    if check_files:
        _check_files(recipe, str(path))
    check_before_load(recipe, str(path), check_files=check_files)
    return recipe


def with_values(recipe: Recipe, values: dict[str, Any], where: str = "recipe") -> Recipe:
    """The recipe with dotted ``values`` set (``{"budgets.max_turns": 2}``) and validated again,
    so an override is checked exactly like the file's own value (``ssrl-trl eval --recipe``)."""
    data = recipe.model_dump(exclude_unset=True)
    for key, value in values.items():
        _set_dotted(data, key, value)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation(exc, where)) from None


def _check_files(recipe: Recipe, where: str) -> None:
    from .prompts import TEMPLATES

    for src in recipe.data.train + recipe.data.eval:
        resolved = recipe.path(src.path)
        if not resolved.startswith("hf:") and not Path(resolved).exists():
            raise RecipeError(f"{where}: data file {src.path!r} not found (looked at {resolved})")
    template = recipe.data.prompt_template
    if template not in TEMPLATES and not Path(recipe.path(template)).is_file():
        raise RecipeError(
            f"{where}: prompt_template {template!r} is neither built-in {sorted(TEMPLATES)} nor a file"
        )
    retriever = getattr(recipe.environment.options, "retriever", None)
    if retriever is not None and retriever.index is not None:
        index, corpus = recipe.path(retriever.index), recipe.path(retriever.corpus)
        if not Path(index).exists() and (corpus is None or not Path(corpus).exists()):
            raise RecipeError(
                f"{where}: retriever index {retriever.index!r} not found and no corpus to build it from"
            )
        if not Path(index).exists() and retriever.kind != "bm25":
            raise RecipeError(
                f"{where}: {retriever.kind} index {retriever.index!r} not found; build it with "
                f"`ssrl-trl index --kind {retriever.kind}` (only BM25 is built from the corpus)"
            )
    cache = getattr(retriever, "cache", None)
    if cache is not None and cache.path is not None and Path(recipe.path(cache.path)).exists():
        from .retrieval.cache import CacheError, check_cache_file

        try:  # an existing file must be a cache this version reads; a missing one is created later
            check_cache_file(recipe.path(cache.path), cache.timeout)
        except CacheError as exc:
            raise RecipeError(f"{where}: environment.retriever.cache: {exc}") from None


def resolve_dotted(dotted: str) -> Any:
    """Import ``package.module.attr``; the project root is importable so ``rewards.*`` resolve."""
    if "." not in dotted:
        raise ValueError("expected a dotted path like rewards.ssrl.reward")
    module_name, attr = dotted.rsplit(".", 1)
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path and (Path(root) / "rewards").is_dir():
        sys.path.append(root)
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)
