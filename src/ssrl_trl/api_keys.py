"""API keys are named, never written: a recipe says which environment variable holds a key.

A recipe is committed, shared and logged, so a key inside it leaks; the retrievers that call paid
services (a web-search API, a simulated search engine behind an OpenAI-compatible server) take the
*name* of an environment variable instead, checked by this one rule when the recipe loads.
"""

from __future__ import annotations

import re

__all__ = ["check_env_var_name"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_var_name(name: str | None) -> str | None:
    """``name`` if it can be an environment variable's name (or None); else a ValueError that does
    not echo the value, which may be the key itself, pasted by mistake."""
    if name is not None and not _ENV_NAME.fullmatch(name):
        raise ValueError("must be the name of an environment variable (letters, digits, _), not a key")
    return name
