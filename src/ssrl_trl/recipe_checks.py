"""Checks a recipe must pass before any model weights load.

A mistake found after the trainer is built costs a user minutes of loading (hours on a cluster
queue); so everything that can be checked from the recipe alone is checked in
:func:`~ssrl_trl.recipe.load_recipe`, and each failure is one :class:`~ssrl_trl.recipe.RecipeError`
naming the file and the key:

* ``grpo``: value types against ``GRPOConfig``'s annotations, and the ranges TRL does not check
  (``temperature > 0`` — TRL divides logits by it —, a finite positive learning rate, positive
  lengths and batch sizes, ``num_generations >= 2``); a YAML boolean where a string is meant
  (``save_strategy: no``) is refused with the fix;
* ``health``: guard names and their options (the callbacks are built, which validates them);
* ``rewards``: every path imports (an error raised while importing the module is reported with
  its message), resolves to a callable or, with ``kwargs``, to a factory whose result is
  callable; weights are finite;
* ``grpo.output_dir``: a folder that can be created and written;
* ``data``: each file has rows, the question and answer columns, and answers that are not empty
  after normalisation (an empty normalised answer would match every prediction under cover-EM).

A recipe names Python objects to import (rewards): it is trusted code, like a training script.
"""

from __future__ import annotations

import math
import tempfile
import typing
from pathlib import Path
from typing import Any

__all__ = ["build_rewards", "check_before_load"]


def check_before_load(recipe: Any, where: str, *, check_files: bool = True) -> None:
    """Every check above; ``check_files=False`` skips the ones that read or create files."""
    _check_grpo_values(recipe.grpo, where)
    _check_health(recipe.health, where)
    build_rewards(recipe, where)
    if check_files:
        _check_output_dir(recipe, where)
        _check_data(recipe, where)


def build_rewards(recipe: Any, where: str = "recipe") -> tuple[list[Any], list[float]]:
    """The recipe's reward callables and weights (what ``GRPOTrainer`` gets).

    A reward that can score another tag set (``with_tags``, as every ``ssrl_trl.rewards`` class
    can) is bound to the recipe's tags, unless its ``kwargs`` name ``tags`` themselves: a reward
    scores the grammar the model is prompted with, renamed tags included.
    """
    from .recipe import RecipeError

    tags = recipe.tag_set()
    funcs, weights = [], []
    for i, spec in enumerate(recipe.rewards):
        obj = _reward(spec, f"rewards[{i}] ({spec.path})", where)
        if callable(getattr(obj, "with_tags", None)) and "tags" not in (spec.kwargs or {}):
            try:
                obj = obj.with_tags(tags)
            except (ValueError, TypeError, KeyError) as exc:  # e.g. a refine reward, tags without refine
                raise RecipeError(
                    f"{where}: rewards[{i}] ({spec.path}) cannot score tag set {tags.name!r}: {exc}"
                ) from None
        if not callable(obj):
            raise RecipeError(
                f"{where}: rewards[{i}] ({spec.path}) is not callable (got {type(obj).__name__})"
            )
        funcs.append(obj)
        weights.append(float(spec.weight))
    return funcs, weights


def _reward(spec: Any, key: str, where: str) -> Any:
    """The object a reward spec names: imported, and called with its kwargs if it is a factory."""
    from .recipe import RecipeError, resolve_dotted

    if not math.isfinite(spec.weight):
        raise RecipeError(f"{where}: {key}: weight must be a finite number, got {spec.weight}")
    try:
        obj = resolve_dotted(spec.path)
    except Exception as exc:  # a module that fails to import is the user's code: report its message
        raise RecipeError(f"{where}: {key} cannot be imported: {type(exc).__name__}: {exc}") from None
    if spec.kwargs is not None:
        if not isinstance(obj, type) and hasattr(obj, "score"):
            raise RecipeError(
                f"{where}: {key} is a reward object, not a factory, so it takes no kwargs; "
                f"use its make_* factory (e.g. rewards.shaping.make_search_count)"
            )
        try:
            return obj(**spec.kwargs)  # a factory / reward class with parameters
        except Exception as exc:
            raise RecipeError(
                f"{where}: {key} with kwargs {spec.kwargs}: {type(exc).__name__}: {exc}"
            ) from None
    if isinstance(obj, type):
        try:
            return obj()
        except Exception as exc:
            raise RecipeError(f"{where}: {key}: {type(exc).__name__}: {exc}") from None
    return obj


# -- grpo ------------------------------------------------------------------------------------------
_POSITIVE = ("learning_rate", "max_completion_length", "per_device_train_batch_size", "num_generations")


def _check_grpo_values(grpo: dict[str, Any], where: str) -> None:
    from .recipe import RecipeError

    hints = _grpo_hints()
    for key, value in grpo.items():
        expected = hints.get(key)
        if expected is None or value is None:
            continue
        problem = _type_problem(value, expected)
        if problem:
            raise RecipeError(f"{where}: grpo.{key}: {problem}")
    if "temperature" in grpo and not (_is_number(grpo["temperature"]) and grpo["temperature"] > 0):
        raise RecipeError(
            f"{where}: grpo.temperature must be > 0 (TRL divides the logits by it), got {grpo['temperature']!r}"
        )
    for key in _POSITIVE:
        if key in grpo and not (_is_number(grpo[key]) and math.isfinite(grpo[key]) and grpo[key] > 0):
            raise RecipeError(f"{where}: grpo.{key} must be a finite number > 0, got {grpo[key]!r}")
    if "num_generations" in grpo and grpo["num_generations"] < 2:
        raise RecipeError(f"{where}: grpo.num_generations must be >= 2 (GRPO compares samples of a group)")
    for key in ("beta", "top_p", "min_p"):
        if (
            key in grpo
            and grpo[key] is not None
            and not (_is_number(grpo[key]) and math.isfinite(grpo[key]) and grpo[key] >= 0)
        ):
            raise RecipeError(f"{where}: grpo.{key} must be a finite number >= 0, got {grpo[key]!r}")


def _grpo_hints() -> dict[str, Any]:
    from trl import GRPOConfig

    try:
        return typing.get_type_hints(GRPOConfig)
    except Exception:  # an annotation this Python cannot evaluate: fall back to no type checks
        return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_problem(value: Any, expected: Any) -> str | None:
    """A message when ``value`` cannot be of type ``expected`` (simple types only)."""
    allowed = _simple_types(expected)
    if allowed is None:  # unions of complex types, enums, callables: TRL checks those itself
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return None
        if str in allowed:
            text = "yes/on/true" if value else "no/off/false"
            return f'YAML read an unquoted {text} as the boolean {value}; quote the string (e.g. "no")'
        return f"expected {_names(allowed)}, got the boolean {value}"
    if isinstance(value, int) and (int in allowed or float in allowed):
        return None
    if isinstance(value, float) and float in allowed:
        return None
    if isinstance(value, str) and str in allowed:
        return None
    if isinstance(value, list | tuple) and list in allowed:
        return None
    if isinstance(value, dict) and dict in allowed:
        return None
    return f"expected {_names(allowed)}, got {type(value).__name__} {value!r}"


def _simple_types(tp: Any) -> set[type] | None:
    import enum
    import types

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        out: set[type] = set()
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            sub = _simple_types(arg)
            if sub is None:
                return None
            out |= sub
        return out
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(tp)}
    if origin in (list, tuple):
        return {list}
    if origin is dict:
        return {dict}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {str}
    if tp in (int, float, str, bool, list, dict):
        return {tp}
    return None


def _names(types_: set[type]) -> str:
    return " or ".join(sorted(t.__name__ for t in types_))


# -- health, retriever, output folder --------------------------------------------------------------
def _check_health(health: dict[str, Any], where: str) -> None:
    from .health import build_health_callbacks
    from .recipe import RecipeError

    try:
        build_health_callbacks(health)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: health: {exc}") from None


def _check_output_dir(recipe: Any, where: str) -> None:
    from .recipe import RecipeError

    out = Path(recipe.grpo.get("output_dir") or f"runs/{recipe.method}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise RecipeError(
            f"{where}: grpo.output_dir {str(out)!r} is not a writable folder: {exc.strerror or exc}"
        ) from None


# -- data ------------------------------------------------------------------------------------------
def _check_data(recipe: Any, where: str) -> None:
    from .data import Source, load_source
    from .recipe import RecipeError
    from .scoring import normalize_answer

    d = recipe.data
    for section, specs in (("train", d.train), ("eval", d.eval)):
        for i, s in enumerate(specs):
            key = f"data.{section}[{i}] ({s.path})"
            path = recipe.path(s.path)
            if path.startswith("hf:"):
                continue  # a hub dataset is read (and checked) when the run starts
            try:
                items = load_source(
                    Source(path, s.name, s.split, s.weight, s.limit),
                    question_key=d.question_key,
                    answer_key=d.answer_key,
                    id_key=d.id_key,
                )
            except (KeyError, ValueError, OSError, UnicodeDecodeError) as exc:
                raise RecipeError(f"{where}: {key}: {exc}") from None
            if not items:
                raise RecipeError(f"{where}: {key}: no rows")
            for item in items:
                if not any(normalize_answer(a) for a in item.golden_answers):
                    raise RecipeError(
                        f"{where}: {key}: question {item.id!r} has no answer left after normalisation "
                        f"({item.golden_answers!r}); it would match every prediction under cover-EM"
                    )
