"""``ssrl-trl`` command line: one subcommand per tool, each implemented in its own module.

Subcommands are imported lazily so ``ssrl-trl --help`` stays fast and a missing optional extra
(faiss, fastapi) only matters for the subcommand that needs it.
"""

from __future__ import annotations

import importlib
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
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
