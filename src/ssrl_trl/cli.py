"""``ssrl-trl`` command line: one subcommand per tool, each implemented in its own module.

Subcommands are imported lazily so ``ssrl-trl --help`` stays fast and a missing optional extra
(faiss, fastapi) only matters for the subcommand that needs it.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["main"]

#: subcommand -> ("module:function", one-line help). Each function takes ``argv: list[str]``.
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("ssrl_trl.retrieval.index_cli:main", "build a BM25 or dense retrieval index from a corpus"),
    "serve-retriever": ("ssrl_trl.retrieval.server:main", "serve an index: Search-R1 / R1-Searcher HTTP API"),
    "plot-run": ("ssrl_trl.plots:plot_run_main", "plot reward / format / searches over steps of a run"),
    "train": ("ssrl_trl.train:main", "train from a recipe (same as python -m ssrl_trl.train)"),
    "prepare-data": ("ssrl_trl.data:prepare_data_main", "mix QA sources into unique-id prompt rows"),
    "eval": ("ssrl_trl.evaluation.cli:main", "EM/F1 tables, pass@k, Sim2Real and hybrid search for a model"),
    "view": ("ssrl_trl.viewer:main", "write a static HTML viewer of a rollout log (masks, rewards)"),
    "compare": (
        "ssrl_trl.evaluation.compare:main",
        "paired before/after comparison of two eval folders (bootstrap 95% CI)",
    ),
    "make-facts": (
        "ssrl_trl.fictional_facts:main",
        "write the fictional-facts corpus and questions of the learnability check",
    ),
    "select-reachable": (
        "ssrl_trl.reachable:main",
        "keep the questions whose gold answer is in a retriever's top-k passages",
    ),
    "check-learning": (
        "ssrl_trl.learn_check:main",
        "fail unless a run's before_after.json shows the learning target was reached",
    ),
    "convert-gguf": (
        "ssrl_trl.models:convert_main",
        "write an HF model folder from a GGUF (default: SmolLM2)",
    ),
}


def _usage() -> str:
    lines = ["usage: ssrl-trl <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ssrl-trl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except Exception as exc:
        if not _is_user_error(exc) or os.environ.get("SSRL_TRL_TRACEBACK"):
            raise
        print(f"ssrl-trl {name}: error: {exc}", file=sys.stderr)
        return 2


def _is_user_error(exc: Exception) -> bool:
    """Input the user can fix (a bad path or option, a corrupt file): one ``error:`` line, exit 2.
    Anything else is a bug and keeps its traceback (so does everything with SSRL_TRL_TRACEBACK=1)."""
    from .errors import UserError

    if isinstance(
        exc, UserError | FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError
    ):
        return True
    from .recipe import RecipeError

    return isinstance(exc, RecipeError)


if __name__ == "__main__":
    sys.exit(main())
