"""From a validated recipe to the running parts: the one assembly path of training and evaluation.

``ssrl_trl.train`` and ``ssrl-trl eval --recipe`` both call :func:`assemble`, so a recipe's tag
set, prompt, environment and budgets are built once, the same way, whoever runs them:

* the tag set (:meth:`Recipe.tag_set`): its grammar and document style travel with it;
* the prompt template, system prompt and forced response prefix;
* the budgets: the recipe's ``budgets`` section (:class:`~ssrl_trl.budgets.Budgets`) with the
  completion cap taken from ``grpo.max_completion_length`` (or GRPOConfig's default);
* the environment: a picklable factory of the registered kind
  (:mod:`ssrl_trl.environments.registry`) that opens its retriever at the first rollout;
* the rewards (:meth:`Assembly.rewards`), bound to the recipe's tag set;
* the backend (:func:`check_backend`): what ``GRPOConfig`` asks for, refused early when the
  rollout cannot honour it.

Nothing here loads weights: every failure is a :class:`~ssrl_trl.recipe.RecipeError` that the
entry points print as one ``error:`` line before any model is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .budgets import Budgets
from .environments.registry import EnvironmentFactory
from .protocol import TagSet
from .recipe import Recipe, RecipeError

__all__ = [
    "Assembly",
    "assemble",
    "check_backend",
    "max_completion_length",
    "model_source",
    "prompt_template",
]


@dataclass(frozen=True)
class Assembly:
    """The running parts of one recipe (see the module docstring)."""

    recipe: Recipe
    tags: TagSet
    template: str
    system_prompt: str | None
    response_prefix: str | None
    budgets: Budgets
    environment: EnvironmentFactory

    def rewards(self, where: str = "recipe") -> tuple[list[Any], list[float]]:
        """The reward callables (bound to :attr:`tags`) and their weights, as GRPOTrainer takes them."""
        from .recipe_checks import build_rewards

        return build_rewards(self.recipe, where)


def assemble(recipe: Recipe) -> Assembly:
    """The running parts of ``recipe`` (already validated by :func:`~ssrl_trl.recipe.load_recipe`)."""
    tags = recipe.tag_set()
    budgets = Budgets(
        **{**recipe.budgets.model_dump(), "max_completion_tokens": max_completion_length(recipe)}
    )
    env = recipe.environment
    return Assembly(
        recipe=recipe,
        tags=tags,
        template=prompt_template(recipe),
        system_prompt=recipe.data.system_prompt,
        response_prefix=env.response_prefix,
        budgets=budgets,
        environment=EnvironmentFactory(env.kind, env.options, tags, recipe.base_dir),
    )


def model_source(recipe: Recipe) -> str:
    """The model to load: the recipe's ``model.name_or_path`` resolved against the recipe's folder
    when such a folder exists, else as written (a hub id)."""
    resolved = recipe.path(recipe.model.name_or_path)
    return resolved if resolved is not None and Path(resolved).exists() else recipe.model.name_or_path


def prompt_template(recipe: Recipe) -> str:
    """The text of the recipe's prompt template (a built-in name or a file)."""
    from .prompts import TEMPLATES, load_template

    name = recipe.data.prompt_template
    try:
        return load_template(name if name in TEMPLATES else recipe.path(name))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"data.prompt_template: {exc}") from None


def max_completion_length(recipe: Recipe) -> int:
    """``grpo.max_completion_length``, or GRPOConfig's default when the recipe leaves it out."""
    value = recipe.grpo.get("max_completion_length")
    if value is None:
        import dataclasses

        from trl import GRPOConfig

        value = next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "max_completion_length")
    return int(value)


def check_backend(args: Any) -> str:
    """The generator ``GRPOConfig`` asks for (``transformers``, ``vllm_colocate``, ``vllm_server``),
    or a :class:`RecipeError` when the multi-turn rollout cannot use it."""
    from .rollout.trl_adapter import backend_kind

    try:
        return backend_kind(args)
    except NotImplementedError as exc:
        raise RecipeError(f"grpo: {exc}") from None
