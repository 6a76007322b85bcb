"""``ssrl-trl eval --recipe FILE``: evaluate what a training recipe trains, without restating it.

The recipe goes through the same assembly as training (:func:`~ssrl_trl.assembly.assemble`): its
model, tag set (with its grammar), environment of any registered kind (its retriever included),
prompt template, system prompt, forced response prefix and budgets (the completion cap is
``grpo.max_completion_length``), and by default its ``data.eval`` questions. Flags given on the
command line override the recipe: those that have a recipe key are written into the recipe and
validated with it (``--topk 5`` is ``environment.topk: 5``), the model flags replace the recipe's
model. The mode is the recipe's: ``self`` for a self-search environment, else ``retrieval`` (one
arm, ``real``, with the recipe's environment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..assembly import Assembly
from ..errors import UserError

__all__ = ["RECIPE_KEYS", "apply_recipe", "recipe_arms"]

#: eval flag -> the recipe key it overrides.
RECIPE_KEYS = {
    "tags": "tags",
    "prompt_template": "data.prompt_template",
    "system": "data.system_prompt",
    "response_prefix": "environment.response_prefix",
    "topk": "environment.topk",
    "max_new_tokens": "grpo.max_completion_length",
    "max_turns": "budgets.max_turns",
    "max_tokens_per_turn": "budgets.max_tokens_per_turn",
    "max_obs_tokens": "budgets.max_obs_tokens",
    "answer_reserve_tokens": "budgets.answer_reserve_tokens",
}
_MODEL_FLAGS = ("gguf_file", "dtype", "trust_remote_code")


def apply_recipe(a: argparse.Namespace, explicit: set[str]) -> Assembly:
    """Read ``a.recipe``, apply the explicit flags to it, set the flags the rest of the evaluation
    reads (model, mode, datasets) and return the recipe's assembly. Errors are ``UserError``s."""
    from ..assembly import assemble, model_source
    from ..recipe import RecipeError, load_recipe, with_values
    from .arms import retriever_section

    try:
        recipe = load_recipe(a.recipe, check_files=False)
        values = {key: getattr(a, flag) for flag, key in RECIPE_KEYS.items() if flag in explicit}
        if "retriever" in explicit:
            values["environment.retriever"] = retriever_section(a.retriever, a.corpus)
        recipe = with_values(recipe, values, a.recipe)
        parts = assemble(recipe)
    except (RecipeError, ValueError) as exc:
        raise UserError(f"--recipe {a.recipe}: {exc}") from None
    m = recipe.model
    if "model" not in explicit:
        a.model = model_source(recipe)
        if "chat_template" not in explicit:
            a.chat_template = recipe.path(m.chat_template)
    for flag in _MODEL_FLAGS:
        if flag not in explicit and "model" not in explicit:
            setattr(a, flag, getattr(m, flag))
    mode = "self" if recipe.environment.kind == "self_search" else "retrieval"
    if "mode" in explicit and a.mode != mode:
        raise UserError(
            f"--recipe {a.recipe} evaluates its own {recipe.environment.kind!r} environment (mode {mode}); "
            f"--mode {a.mode} needs the flag form"
        )
    a.mode = mode
    if "datasets" not in explicit:
        if recipe.data.eval:
            a.datasets = [f"{s.name or Path(s.path).stem}={recipe.path(s.path)}" for s in recipe.data.eval]
        else:
            print(f"[eval] {a.recipe} has no data.eval; evaluating --datasets {a.datasets}", file=sys.stderr)
    return parts


def recipe_arms(a: argparse.Namespace, parts: Assembly, tokenizer: Any) -> list:
    """The recipe's one arm: its environment (built with this tokenizer), prompt and budgets."""
    from ..rollout.backends import SamplingConfig
    from .runner import Arm

    env = parts.environment(tokenizer)
    self_search = a.mode == "self"
    options = parts.recipe.environment.options
    return [
        Arm(
            "self" if self_search else "real",
            env,
            parts.template,
            parts.budgets,
            SamplingConfig(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k),
            n=a.n,
            system=parts.system_prompt,
            signals=self_search,
            response_prefix=parts.response_prefix,
            format_check=None if a.format_check == "auto" else a.format_check,
            describe={
                "recipe_environment": parts.recipe.environment.kind,
                "options": options.model_dump(mode="json"),
            },
        )
    ]
