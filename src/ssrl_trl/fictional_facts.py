"""A learnability task: invented people, facts about them only a search can find, and questions.

``make learn-check`` trains on this task to show that gradients flowing through the whole path
(recipe → rollout engine → BM25 retrieval → masks → rewards → GRPOTrainer) teach a model to
search. The people are invented (a common first name plus an invented surname), so no base
model knows their facts; the answers are ordinary words (a city, an instrument, a job), which a
small model can copy from a retrieved passage once it has learnt to search and to answer in the
answer tags. Everything is generated from a seed at run time; nothing generated is committed.

    ssrl-trl make-facts --out runs/learn_check/data --seed 0

writes ``corpus.jsonl`` (FlashRAG ``{"id", "contents": "\\"Title\\"\\ntext"}``), ``train.jsonl``
and ``heldout.jsonl`` (``{"id", "question", "golden_answers", "dataset"}``) and
``manifest.json``. Training and held-out questions are about **different people**, drawn from
different random streams (``seed`` and ``seed + 1``); every person is in the corpus, so held-out
questions are answerable by searching but were never trained on.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Person", "FactTask", "RELATIONS", "generate_task", "write_task", "main"]

_FIRST = {
    "She": [
        "Talia",
        "Elena",
        "Priya",
        "Nadia",
        "Irene",
        "Leona",
        "Mira",
        "Selma",
        "Ada",
        "Vera",
        "Greta",
        "Lydia",
        "Nora",
        "Ines",
        "Clara",
        "Hanna",
    ]
    + ["Rosa", "Alma", "Edith", "Maren", "Yara", "Freya", "Ilse", "Lotte"],
    "He": [
        "Marcus",
        "Jonah",
        "Oscar",
        "Felix",
        "Tobias",
        "Caspar",
        "Rufus",
        "Hugo",
        "Dorian",
        "Milo",
        "Anton",
        "Silas",
        "Ezra",
        "Bruno",
        "Emil",
    ]
    + ["Otto", "Viktor", "Jasper", "Leon", "Quentin", "Boris", "Gideon", "Kasimir"],
}
_SURNAME_HEAD = [
    "Ash",
    "Bram",
    "Cor",
    "Dun",
    "Elm",
    "Fen",
    "Gar",
    "Hal",
    "Ivo",
    "Jur",
    "Kel",
    "Lom",
    "Mar",
    "Nor",
    "Orr",
    "Pel",
    "Quil",
    "Ros",
    "Sten",
    "Tal",
    "Ulm",
    "Vor",
    "Wen",
    "Yar",
    "Zel",
    "Brin",
    "Cal",
    "Dro",
    "Fal",
    "Gorm",
]
_SURNAME_TAIL = [
    "croft",
    "wick",
    "ford",
    "ley",
    "more",
    "stead",
    "holt",
    "by",
    "wyn",
    "ridge",
    "mere",
    "thorpe",
    "vane",
    "dell",
    "shaw",
    "brook",
    "worth",
    "field",
    "wood",
    "gate",
    "hurst",
    "stone",
    "well",
    "ton",
]

#: Ordinary-word answers, so a small model can copy them once it has found the passage.
_CITIES = [
    "Perth",
    "Lisbon",
    "Oslo",
    "Dublin",
    "Vienna",
    "Prague",
    "Lima",
    "Nairobi",
    "Quebec",
    "Krakow",
    "Seville",
    "Bergen",
    "Porto",
    "Geneva",
    "Turin",
    "Lyon",
    "Leeds",
    "Cairo",
    "Hanoi",
    "Denver",
    "Austin",
    "Boston",
    "Madrid",
    "Athens",
    "Zurich",
    "Munich",
    "Helsinki",
    "Bogota",
    "Valencia",
    "Glasgow",
    "Bristol",
    "Kyoto",
    "Osaka",
    "Seoul",
    "Manila",
    "Santiago",
    "Havana",
    "Tunis",
    "Riga",
    "Tallinn",
]
_INSTRUMENTS = [
    "violin",
    "cello",
    "flute",
    "harp",
    "trumpet",
    "clarinet",
    "oboe",
    "piano",
    "guitar",
    "banjo",
    "drums",
    "saxophone",
    "accordion",
    "trombone",
    "mandolin",
    "bassoon",
    "ukulele",
    "harmonica",
]
_JOBS = [
    "baker",
    "carpenter",
    "nurse",
    "pilot",
    "chemist",
    "architect",
    "librarian",
    "plumber",
    "sculptor",
    "journalist",
    "surgeon",
    "gardener",
    "tailor",
    "potter",
    "geologist",
    "translator",
    "astronomer",
    "beekeeper",
]


@dataclass(frozen=True)
class Relation:
    """One kind of fact: the sentence stating it and the question asking for it."""

    name: str
    values: tuple[str, ...]
    sentence: str  # format fields: subject (the name first, then the pronoun), value
    question: str  # format field: name


RELATIONS: tuple[Relation, ...] = (
    Relation("birthplace", tuple(_CITIES), "{subject} was born in {value}.", "Where was {name} born?"),
    Relation(
        "instrument",
        tuple(_INSTRUMENTS),
        "{subject} plays the {value}.",
        "Which instrument does {name} play?",
    ),
    Relation("job", tuple(_JOBS), "{subject} works as a {value}.", "What is the job of {name}?"),
)


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str
    facts: tuple[tuple[str, str], ...]  # (relation name, value), in the order the passage states them

    def passage(self) -> str:
        sentences = []
        for i, (rel_name, value) in enumerate(self.facts):
            rel = next(r for r in RELATIONS if r.name == rel_name)
            sentences.append(rel.sentence.format(subject=self.pronoun if i else self.name, value=value))
        return " ".join(sentences)


@dataclass(frozen=True)
class FactTask:
    people: tuple[Person, ...]
    train: tuple[dict, ...]
    heldout: tuple[dict, ...]
    seed: int

    def corpus(self) -> list[dict]:
        return [{"id": str(i), "contents": f'"{p.name}"\n{p.passage()}'} for i, p in enumerate(self.people)]


def _people(
    rng: random.Random, n: int, taken: set[str], facts_per_person: int, relations: Sequence[Relation]
) -> list[Person]:
    out = []
    while len(out) < n:
        pronoun = rng.choice(("He", "She"))
        surname = f"{rng.choice(_SURNAME_HEAD)}{rng.choice(_SURNAME_TAIL)}"
        name = f"{rng.choice(_FIRST[pronoun])} {surname}"
        # Unique surnames keep BM25 unambiguous: the question names one person only.
        if surname in taken:
            continue
        taken.add(surname)
        facts = [(r.name, rng.choice(r.values)) for r in relations]
        rng.shuffle(facts)
        facts = facts[:facts_per_person]
        out.append(Person(name, pronoun, tuple(facts)))
    return out


def _questions(people: Sequence[Person], rng: random.Random, split: str) -> list[dict]:
    rows = []
    for i, person in enumerate(people):
        rel_name, value = rng.choice(person.facts)
        rel = next(r for r in RELATIONS if r.name == rel_name)
        rows.append(
            {
                "id": f"{split}-{i}",
                "question": rel.question.format(name=person.name),
                "golden_answers": [value],
                "dataset": f"facts_{rel_name}",
            }
        )
    return rows


def generate_task(
    seed: int = 0,
    n_train: int = 400,
    n_heldout: int = 100,
    n_distractors: int = 0,
    facts_per_person: int = 1,
    relations: Sequence[str] | None = None,
) -> FactTask:
    """People for training (stream ``seed``), held-out people (stream ``seed + 1``) and optional
    people nobody asks about (stream ``seed + 2``), one passage each, shuffled into one corpus.
    A passage states ``facts_per_person`` facts drawn from ``relations`` (default: all of
    :data:`RELATIONS`); the question asks for one of them."""
    names = [r.name for r in RELATIONS]
    unknown = sorted(set(relations or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown relations {unknown}; choose from {names}")
    chosen = [r for r in RELATIONS if relations is None or r.name in relations]
    if not 1 <= facts_per_person <= len(chosen):
        raise ValueError(f"facts_per_person must be in [1, {len(chosen)}], got {facts_per_person}")
    limit = len(_SURNAME_HEAD) * len(_SURNAME_TAIL)
    if n_train + n_heldout + n_distractors > limit:
        raise ValueError(f"at most {limit} people can have distinct surnames")
    taken: set[str] = set()
    train_rng, held_rng, extra_rng = (random.Random(f"facts:{seed}:{k}") for k in range(3))
    train_people = _people(train_rng, n_train, taken, facts_per_person, chosen)
    held_people = _people(held_rng, n_heldout, taken, facts_per_person, chosen)
    extra = _people(extra_rng, n_distractors, taken, facts_per_person, chosen)
    everyone = train_people + held_people + extra
    random.Random(f"facts:{seed}:order").shuffle(everyone)
    return FactTask(
        people=tuple(everyone),
        train=tuple(_questions(train_people, train_rng, "train")),
        heldout=tuple(_questions(held_people, held_rng, "heldout")),
        seed=seed,
    )


def write_task(task: FactTask, out_dir: str | Path) -> dict[str, str]:
    """Write corpus, train and held-out files plus a manifest; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / "corpus.jsonl", "train": out / "train.jsonl", "heldout": out / "heldout.jsonl"}
    for key, rows in (("corpus", task.corpus()), ("train", task.train), ("heldout", task.heldout)):
        with paths[key].open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = {
        "seed": task.seed,
        "people": len(task.people),
        "train_questions": len(task.train),
        "heldout_questions": len(task.heldout),
        "relations": sorted({name for p in task.people for name, _ in p.facts}),
        "files": {k: str(v) for k, v in paths.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}


def main(argv: list[str] | None = None) -> int:
    """``ssrl-trl make-facts``: write the fictional-facts corpus and questions."""
    p = argparse.ArgumentParser(prog="ssrl-trl make-facts", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=400, help="training questions (one person each)")
    p.add_argument("--heldout", type=int, default=100, help="held-out questions (other people)")
    p.add_argument("--distractors", type=int, default=0, help="extra people nobody asks about")
    p.add_argument("--facts", type=int, default=1, help="facts stated per person (at most one per relation)")
    p.add_argument(
        "--relations",
        nargs="+",
        default=None,
        help=f"kinds of fact (default all: {[r.name for r in RELATIONS]})",
    )
    a = p.parse_args(argv)
    try:
        task = generate_task(a.seed, a.train, a.heldout, a.distractors, a.facts, a.relations)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_task(task, a.out)
    print(f"wrote {', '.join(paths.values())}")
    return 0
