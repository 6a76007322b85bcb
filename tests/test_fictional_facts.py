"""The learnability task and the reachable-question filter."""

from __future__ import annotations

import json

import pytest

from ssrl_trl.fictional_facts import RELATIONS, generate_task, main, write_task
from ssrl_trl.reachable import is_reachable, select_reachable
from ssrl_trl.retrieval.base import Doc
from ssrl_trl.scoring import normalize_answer

PROMPT = "recipes/cpu/prompts/search_r1_short.txt"


def test_same_seed_same_task_and_other_seeds_differ():
    a, b, c = generate_task(0, 50, 20), generate_task(0, 50, 20), generate_task(1, 50, 20)
    assert a == b
    assert a.corpus() != c.corpus() and a.train != c.train


def test_heldout_people_are_other_people_and_every_answer_is_in_the_corpus():
    task = generate_task(7, 120, 40, n_distractors=10)
    names = {q["question"] for q in task.train}
    assert not names & {q["question"] for q in task.heldout}
    text = {p.name: p.passage() for p in task.people}
    assert len(text) == 170  # unique people (distinct surnames)
    for q in task.train + task.heldout:
        person = next(n for n in text if n in q["question"])
        assert q["golden_answers"][0] in text[person]


def test_facts_per_person_and_limits():
    task = generate_task(0, 10, 5, facts_per_person=3)
    assert all(len(p.facts) == 3 for p in task.people)
    with pytest.raises(ValueError, match="facts_per_person"):
        generate_task(0, 10, 5, facts_per_person=4)
    with pytest.raises(ValueError, match="distinct surnames"):
        generate_task(0, 10_000, 10)


def test_no_answer_is_the_prompt_examples_answer():
    """The worked example of the CPU prompt must not leak into the task's answers: a policy that
    copies the example would otherwise be rewarded."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    prompt = normalize_answer((root / PROMPT).read_text())
    for rel in RELATIONS:
        for value in rel.values:
            assert f" {normalize_answer(value)} " not in f" {prompt} ", value


def test_make_facts_cli_writes_flashrag_files(tmp_path):
    assert main(["--out", str(tmp_path), "--seed", "3", "--train", "12", "--heldout", "4"]) == 0
    corpus = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(corpus) == 16 and len(train) == 12
    assert corpus[0]["contents"].startswith('"') and "\n" in corpus[0]["contents"]
    assert set(train[0]) == {"id", "question", "golden_answers", "dataset"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["heldout_questions"] == 4
    write_task(generate_task(3, 12, 4), tmp_path)  # rewriting the same folder is allowed


class _Fixed:
    def __init__(self, results):
        self.results = results

    def search(self, queries, k):
        return [self.results[q][:k] for q in queries]


def test_reachable_means_a_gold_answer_in_the_top_k():
    assert is_reachable(["The Seine flows through Paris."], ["the Seine"])
    assert not is_reachable(["Paris is in France."], ["Seine"])
    rows = [
        {"question": "a", "golden_answers": ["Seine"]},
        {"question": "b", "golden_answers": ["Loire"]},
    ]
    docs = {
        "a": [Doc("1", '"x"\nnothing'), Doc("2", '"y"\nthe Seine river')],
        "b": [Doc("3", '"z"\nLoire')],
    }
    assert select_reachable(rows, _Fixed(docs), k=2) == rows
    assert select_reachable(rows, _Fixed(docs), k=1) == [rows[1]]


@pytest.mark.parametrize(
    ("passage", "golden", "reachable"),
    [
        ("It is not known where he was born.", ["no"], False),  # "no" inside "not"/"known"
        ("No, the two films were made in France.", ["no"], False),  # yes/no is inferred, never copied
        ("Yes", ["yes", "Paris"], False),
        ("The film was released in 1924.", ["1"], False),  # "1" inside "1924"
        ("The film was released in 1924.", ["1924"], True),
        ("He lived in New York City.", ["new york"], True),  # whole words, not the whole passage
        ("He lived in Newark.", ["New"], False),
        ("Born in São Paulo, Brazil.", ["sao paulo", "São Paulo"], True),  # any gold answer
    ],
    ids=["no-in-not", "yes-no-answer", "yes-answer", "digit-in-year", "year", "phrase", "prefix", "accent"],
)
def test_reachable_needs_the_answer_as_whole_words_and_never_a_yes_no(passage, golden, reachable):
    assert is_reachable([passage], golden) is reachable
