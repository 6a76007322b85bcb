"""Evaluation questions: FlashRAG-style jsonl, parquet or ``hf:`` datasets, by path or by name.

A dataset spec is ``PATH``, ``NAME=PATH`` or a bare benchmark ``NAME`` looked up in ``data_dir``
(our data kit's ``<name>_dev.jsonl`` / ``<name>_test.jsonl`` files, or FlashRAG's
``<name>/test.jsonl`` layout). Rows are grouped by their ``dataset`` field when they have one
(``mini_eval.jsonl`` mixes five benchmarks), otherwise by the source name.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..data import QAItem, Source, check_unique_ids, load_source

__all__ = ["BENCHMARKS", "default_data_dir", "load_eval_items", "resolve_dataset"]

#: The seven benchmarks of Search-R1 / SSRL, plus the data kit's mixed mini set.
BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "mini")
_ALIASES = {"mini": "mini_eval", "2wiki": "2wikimultihopqa"}


def default_data_dir() -> Path:
    """``$SSRL_EVAL_DATA`` or the shared data kit's ``qa/`` folder next to the repository."""
    env = os.environ.get("SSRL_EVAL_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "qa"


def resolve_dataset(spec: str, data_dir: Path) -> tuple[str | None, str]:
    """``(name or None, path)`` of one ``--datasets`` entry."""
    name, path = None, spec
    head, sep, tail = spec.partition("=")
    if sep and "/" not in head and ":" not in head:
        name, path = head, tail
    if path.startswith("hf:") or Path(path).exists():
        return name, path
    key = _ALIASES.get(path, path)
    candidates = [
        f"{key}.jsonl",
        f"{key}_test.jsonl",
        f"{key}_dev.jsonl",
        f"{key}/test.jsonl",
        f"{key}/dev.jsonl",
        f"{key}/test.parquet",
    ]
    for cand in candidates:
        if (data_dir / cand).is_file():
            return name or (None if key == "mini_eval" else path), str(data_dir / cand)
    raise FileNotFoundError(
        f"dataset {spec!r} is not a file and not found in {data_dir} (tried {', '.join(candidates)}); "
        f"give a path, NAME=PATH, hf:OWNER/NAME or one of {', '.join(BENCHMARKS)} with --data-dir"
    )


def load_eval_items(
    specs: list[str],
    *,
    data_dir: Path | None = None,
    split: str = "test",
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> list[QAItem]:
    """Items of all specs; ``limit`` caps each dataset group (first rows, or a seeded random
    subset with ``shuffle``). Ids are ``<source>:<row id>`` and must be unique."""
    data_dir = data_dir or default_data_dir()
    items: list[QAItem] = []
    for spec in specs:
        name, path = resolve_dataset(spec, data_dir)
        source_items = load_source(Source(path, name=name, split=split))
        if shuffle:
            random.Random(f"{seed}:{spec}").shuffle(source_items)
        taken: dict[str, int] = {}
        for it in source_items:
            if limit is not None and taken.get(it.dataset, 0) >= limit:
                continue
            taken[it.dataset] = taken.get(it.dataset, 0) + 1
            items.append(it)
    check_unique_ids(items, "name the datasets apart (NAME=PATH)")
    if not items:
        raise ValueError(f"no questions in {specs}")
    return items
