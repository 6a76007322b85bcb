"""Template files with several variants: one per question, stable across processes, validated."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

from ssrl_trl.prompts import (
    VARIANT_SEPARATOR,
    build_messages,
    load_template,
    render_prompt,
    template_variant,
    template_variants,
)
from ssrl_trl.protocol import get_tag_set

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "recipes/cpu/prompts/search_r1_think_question_pool.txt"


def _pool(tmp_path: Path, *variants: str) -> Path:
    path = tmp_path / "pool.txt"
    path.write_text(f"\n{VARIANT_SEPARATOR}\n".join(variants) + "\n", encoding="utf-8")
    return path


def test_single_template_is_its_own_only_variant() -> None:
    text = "Question: {question}"
    assert template_variants(text) == [text]
    assert template_variant(text, "anything") == text


def test_each_question_gets_one_variant_and_all_variants_are_used(tmp_path: Path) -> None:
    path = _pool(
        tmp_path, "A {search_open} Q: {question}", "B {answer_open} Q: {question}", "C Q: {question}"
    )
    template = load_template(str(path))
    tags = get_tag_set("search_r1")
    questions = [f"question number {i}?" for i in range(300)]
    first_letters = collections.Counter(render_prompt(template, q, tags)[0] for q in questions)
    assert set(first_letters) == {"A", "B", "C"}
    assert min(first_letters.values()) > 60  # a hash, not a bias toward one variant
    for q in questions[:20]:
        rendered = render_prompt(template, q, tags)
        assert rendered == render_prompt(template, q, tags)
        assert rendered.endswith(f"Q: {q}")
        assert VARIANT_SEPARATOR not in rendered
    # The tag fields of the chosen variant are filled in.
    rendered = {render_prompt(template, q, tags)[:1]: render_prompt(template, q, tags) for q in questions}
    assert "<search>" in rendered["A"] and "<answer>" in rendered["B"]


def test_the_choice_does_not_depend_on_the_process(tmp_path: Path) -> None:
    """Python's str hash is salted per process; the variant must not be."""
    path = _pool(tmp_path, "A {question}", "B {question}", "C {question}", "D {question}")
    code = (
        "import sys; from ssrl_trl.prompts import load_template, template_variant as v; "
        "t = load_template(sys.argv[1]); "
        "print(''.join(v(t, f'q{i}')[0] for i in range(64)))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1
    template = load_template(str(path))
    assert runs.pop().strip() == "".join(template_variant(template, f"q{i}")[0] for i in range(64))


def test_a_variant_without_the_question_is_rejected_by_number(tmp_path: Path) -> None:
    path = _pool(tmp_path, "Q: {question}", "no question here")
    with pytest.raises(ValueError, match=r"variant 2 of .*\{question\}"):
        load_template(str(path))


def test_a_separator_that_does_not_stand_between_variants_is_rejected() -> None:
    with pytest.raises(ValueError, match="own line"):
        template_variants(f"Q: {{question}}\n{VARIANT_SEPARATOR}\n\n")
    with pytest.raises(ValueError, match="own line"):
        template_variants(f"{VARIANT_SEPARATOR}\nQ: {{question}}")


def test_the_shipped_pool_has_distinct_worked_examples_and_renders() -> None:
    template = load_template(str(POOL))
    variants = template_variants(template)
    assert len(variants) == 8
    examples = {v.split('for the question "')[1].split('"')[0] for v in variants}
    assert len(examples) == 8
    messages = build_messages(template, "Who founded the city of Rome?", get_tag_set("search_r1"), "sys")
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[1]["content"].endswith("Question: Who founded the city of Rome?")
