"""Paths in recipes: resolving a recipe's relative paths, and validating options that name a
sub-folder of another folder (e.g. of ``output_dir``).

A sub-folder is often emptied or pruned by the code that owns it, so a value of ``""``, ``"."``,
``".."``, an absolute path or ``"a/../../b"`` would point that deletion at the parent folder or
anywhere on disk. Those values are refused up front, with the option's name in the message.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

__all__ = ["check_subfolder", "inside", "resolve_path"]


def resolve_path(value: str | None, base_dir: str | None) -> str | None:
    """A recipe's relative path: as given if it exists from the working directory, else relative
    to the recipe's folder ``base_dir`` (or up to three folders above it), else as given.
    ``hf:`` dataset names and ``None`` pass through."""
    if value is None or value.startswith("hf:"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists() or base_dir is None:
        return str(p)
    base = Path(base_dir)
    for folder in (base, *list(base.parents)[:3]):
        if (folder / p).exists():
            return str(folder / p)
    return str(p)


def check_subfolder(option: str, value: object) -> str:
    """``value`` if it is a relative folder name that stays below its parent, else ``ValueError``.

    >>> check_subfolder("health.healthy_checkpoints.dirname", "healthy/kept")
    'healthy/kept'
    """
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"{option} must be a folder name (a string), got {value!r}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{option} must name a sub-folder, got an empty name {text!r}")
    path = PurePath(text)
    if path.is_absolute() or path.anchor or text.startswith("~"):
        raise ValueError(f"{option} must be a sub-folder name relative to its parent, not the path {text!r}")
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            break
    if depth <= 0:
        raise ValueError(
            f"{option}={text!r} does not name a folder below its parent (it resolves to the parent "
            "itself or leaves it); use a plain name such as 'healthy'"
        )
    return text


def inside(parent: str | os.PathLike[str], child: str | os.PathLike[str]) -> bool:
    """Whether ``child`` resolves to a folder strictly below ``parent`` (symbolic links followed)."""
    parent_real, child_real = Path(parent).resolve(), Path(child).resolve()
    return parent_real != child_real and parent_real in child_real.parents
