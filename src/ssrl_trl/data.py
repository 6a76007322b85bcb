"""QA data → prompt rows for GRPO.

Sources are FlashRAG-style jsonl (``{"id", "question", "golden_answers"}``), parquet, or a
``datasets`` name (``hf:owner/name``). Every row gets a globally unique ``id`` of the form
``<source>:<original id or row number>`` and a ``dataset`` column, so questions from different
sources can never share an id (a public Search-R1 fork computed GRPO groups from a per-source
index that restarted at 0 for each dataset). Duplicated ids are an error, not a silent merge.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .prompts import build_messages
from .protocol import TagSet
from .scoring import as_golden_list

__all__ = [
    "QAItem",
    "Source",
    "build_prompt_rows",
    "check_unique_ids",
    "load_source",
    "mix_sources",
    "prepare_data_main",
]


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    golden_answers: list[str]
    dataset: str


@dataclass(frozen=True)
class Source:
    path: str
    name: str | None = None
    split: str = "train"
    weight: float = 1.0
    limit: int | None = None


def _records(path: str, split: str) -> Iterable[dict[str, Any]]:
    if path.startswith("hf:"):
        from datasets import load_dataset

        yield from load_dataset(path[3:], split=split)
        return
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"QA source {path} does not exist")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(p).to_pylist()
        return
    with p.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None


def _golden(record: dict[str, Any], answer_key: str, where: str) -> list[str]:
    if answer_key in record:
        value = record[answer_key]
    elif "reward_model" in record and isinstance(record["reward_model"], dict):  # veRL / Search-R1 parquet
        value = record["reward_model"].get("ground_truth")
    elif "answer" in record:
        value = record["answer"]
    else:
        raise KeyError(f"{where}: no {answer_key!r} (or answer / reward_model.ground_truth) field")
    golden = as_golden_list(value)
    if not golden:
        raise ValueError(f"{where}: empty golden answers")
    return golden


def load_source(
    source: Source, *, question_key: str = "question", answer_key: str = "golden_answers", id_key: str = "id"
) -> list[QAItem]:
    """Read one source into QA items with source-qualified ids."""
    name = source.name or Path(source.path.removeprefix("hf:")).stem
    items: list[QAItem] = []
    for i, rec in enumerate(_records(source.path, source.split)):
        where = f"{source.path} row {i}"
        if question_key not in rec:
            raise KeyError(
                f"{where}: no {question_key!r} field (set data.question_key); fields: {sorted(rec)}"
            )
        question = str(rec[question_key]).strip()
        if not question:
            raise ValueError(f"{where}: empty question")
        original = rec.get(id_key, i)
        items.append(
            QAItem(
                f"{name}:{original}", question, _golden(rec, answer_key, where), str(rec.get("dataset", name))
            )
        )
        if source.limit is not None and len(items) >= source.limit:
            break
    return items


def mix_sources(
    groups: Sequence[tuple[list[QAItem], float]], total: int | None, seed: int = 0
) -> list[QAItem]:
    """Sample ``total`` items with per-source weights (without replacement inside a source), or
    concatenate all items when ``total`` is None. Shuffled; ids must be unique."""
    rng = random.Random(seed)
    if total is None:
        items = [it for group, _ in groups for it in group]
    else:
        weight_sum = sum(w for _, w in groups)
        items = []
        for group, weight in groups:
            want = min(len(group), round(total * weight / weight_sum))
            items.extend(rng.sample(group, want))
    rng.shuffle(items)
    check_unique_ids(items, "give the sources distinct names")
    return items


def check_unique_ids(items: Iterable[QAItem], hint: str) -> None:
    """Raise on a repeated question id: two sources (or two copies of one) would share GRPO
    groups, predictions and resume records."""
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise ValueError(f"duplicate question id {it.id!r}: {hint}")
        seen.add(it.id)


def build_prompt_rows(
    items: Iterable[QAItem], template: str, tags: TagSet, system: str | None = None
) -> list[dict]:
    """Rows for ``GRPOTrainer``: chat ``prompt`` plus the columns rewards read."""
    return [
        {
            "prompt": build_messages(template, it.question, tags, system),
            "question": it.question,
            "golden_answers": it.golden_answers,
            "id": it.id,
            "dataset": it.dataset,
        }
        for it in items
    ]


def prepare_data_main(argv: list[str]) -> int:
    """``ssrl-trl prepare-data``: mix QA sources into one jsonl of unique-id rows (with prompts)."""
    import argparse

    from .prompts import load_template
    from .protocol import get_tag_set

    parser = argparse.ArgumentParser(prog="ssrl-trl prepare-data", description=prepare_data_main.__doc__)
    parser.add_argument("--source", action="append", required=True, help="PATH[:WEIGHT] or hf:NAME[:WEIGHT]")
    parser.add_argument("--out", required=True, help="output jsonl")
    parser.add_argument("--total", type=int, default=None, help="sample this many rows by weight")
    parser.add_argument("--template", default="search_r1", help="built-in template name or file")
    parser.add_argument("--tags", default="search_r1", help="tag set name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    groups = []
    for spec in args.source:
        path, _, weight = (
            spec.rpartition(":") if spec.rsplit(":", 1)[-1].replace(".", "").isdigit() else (spec, "", "1")
        )
        try:
            groups.append((load_source(Source(path)), float(weight)))
        except (ValueError, KeyError) as exc:  # malformed rows: the user's file, shown as one error line
            from .errors import UserError

            raise UserError(f"--source {spec}: {exc.args[0] if exc.args else exc}") from None
    items = mix_sources(groups, args.total, args.seed)
    rows = build_prompt_rows(items, load_template(args.template), get_tag_set(args.tags))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows from {len(groups)} source(s) to {args.out}")
    return 0
