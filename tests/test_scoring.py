"""Answer metrics (``ssrl_trl.scoring``): FlashRAG / SQuAD definitions of EM, cover-EM and F1."""

from __future__ import annotations

import numpy as np
import pytest

from ssrl_trl.scoring import as_golden_list, cover_em, em, f1, normalize_answer, score_answer


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Paris", "paris"),
        ("The Eiffel Tower", "eiffel tower"),
        ("  the   Eiffel\n\tTower!  ", "eiffel tower"),
        ("A cat, an owl and the dog.", "cat owl and dog"),
        ("Theatre", "theatre"),
        ("Anatomy of a Murder", "anatomy of murder"),
        ("U.S.A.", "usa"),
        ("rock-n-roll", "rocknroll"),
        ("O'Neil", "oneil"),
        ('"quoted" (parens) [brackets] {braces}', "quoted parens brackets braces"),
        ("1,000,000", "1000000"),
        ("the", ""),
        ("", ""),
        ("!!!", ""),
        ("Beyoncé", "beyoncé"),
        ("北京", "北京"),
        ("Café — «bistro»", "café — «bistro»"),
        ("THE BEATLES", "beatles"),
    ],
    ids=[
        "lowercase",
        "drop-article",
        "collapse-whitespace",
        "all-articles",
        "article-only-as-word",
        "article-mid-sentence",
        "drop-dots",
        "drop-hyphens",
        "drop-apostrophe",
        "drop-brackets-quotes",
        "digits-keep-no-commas",
        "article-only",
        "empty",
        "punctuation-only",
        "accent-kept",
        "cjk-kept",
        "non-ascii-punctuation-kept",
        "upper-article",
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_normalize_answer_is_idempotent_on_table_values():
    for raw in ["The  Eiffel Tower!", "A cat, an owl", "U.S.A.", "北京 the city"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


@pytest.mark.parametrize(
    ("golden", "expected"),
    [
        ("Paris", ["Paris"]),
        (["Paris", "Paris, France"], ["Paris", "Paris, France"]),
        (("a", "b"), ["a", "b"]),
        (np.array(["Paris", "City of Light"], dtype=object), ["Paris", "City of Light"]),
        (np.array(["Paris", "City of Light"]), ["Paris", "City of Light"]),
        ({"target": ["Paris", "Lutetia"]}, ["Paris", "Lutetia"]),
        ({"target": "Paris"}, ["Paris"]),
        ({"target": np.array(["Paris"], dtype=object)}, ["Paris"]),
        (["Paris", None], ["Paris"]),
        ([1969, 3.5], ["1969", "3.5"]),
        (1969, ["1969"]),
        (None, []),
        ([], []),
        ({"target": []}, []),
    ],
    ids=[
        "string",
        "list",
        "tuple",
        "numpy-object-array",
        "numpy-str-array",
        "dict-target-list",
        "dict-target-string",
        "dict-target-numpy",
        "none-items-dropped",
        "numbers-stringified",
        "scalar-number",
        "none",
        "empty-list",
        "dict-empty-target",
    ],
)
def test_as_golden_list(golden, expected):
    assert as_golden_list(golden) == expected
    assert all(isinstance(g, str) for g in as_golden_list(golden))


def test_as_golden_list_mapping_without_target_names_the_key():
    with pytest.raises(ValueError, match="'target'"):
        as_golden_list({"answers": ["Paris"]})


# Each row: prediction, golden, EM, cover-EM, F1 (F1 rounded to 4 places).
METRIC_TABLE = [
    ("Paris", "Paris", 1.0, 1.0, 1.0),
    ("paris.", "Paris", 1.0, 1.0, 1.0),
    ("The Beatles", ["Beatles", "The Rolling Stones"], 1.0, 1.0, 1.0),
    ("the rolling stones", ["Beatles", "The Rolling Stones"], 1.0, 1.0, 1.0),
    ("Rolling", ["Beatles", "The Rolling Stones"], 0.0, 0.0, 0.6667),
    ("It was Paris, France", "paris", 0.0, 1.0, 0.4),
    ("new york city", "new york", 0.0, 1.0, 0.8),
    ("new york", "new york city", 0.0, 0.0, 0.8),
    ("London", "Paris", 0.0, 0.0, 0.0),
    ("Paris", {"target": ["Lutetia", "Paris"]}, 1.0, 1.0, 1.0),
    ("Paris", np.array(["Lutetia", "paris"], dtype=object), 1.0, 1.0, 1.0),
    ("yes", "yes", 1.0, 1.0, 1.0),
    ("yes", "no", 0.0, 0.0, 0.0),
    ("yes", "yes it is", 0.0, 0.0, 0.0),
    ("no answer", "noanswer", 0.0, 0.0, 0.0),
    ("yes it is", "yes", 0.0, 1.0, 0.0),
    ("no", ["yes", "no"], 1.0, 1.0, 1.0),
    ("yes", ["maybe yes", "yes"], 1.0, 1.0, 1.0),
    ("", "Paris", 0.0, 0.0, 0.0),
    ("", "", 1.0, 1.0, 0.0),
    ("Paris", [], 0.0, 0.0, 0.0),
    ("Paris", None, 0.0, 0.0, 0.0),
    (None, "Paris", 0.0, 0.0, 0.0),
    ("paris paris", "paris", 0.0, 1.0, 0.6667),
    ("the the the", "a", 1.0, 1.0, 0.0),
    ("北京", ["北京", "Beijing"], 1.0, 1.0, 1.0),
]
METRIC_IDS = [
    "exact",
    "case-and-punctuation",
    "article-multi-golden-first",
    "multi-golden-second",
    "partial-overlap-best-of-golden",
    "cover-not-exact",
    "prediction-longer",
    "prediction-shorter-no-cover",
    "wrong",
    "dict-target",
    "numpy-golden",
    "yes-yes",
    "yes-no special case",
    "yes-vs-longer-gold special case",
    "noanswer-token-differs",
    "gold-yes special case",
    "no-in-multi-golden",
    "special-case-per-golden",
    "empty-prediction",
    "empty-both (FlashRAG: F1 0)",
    "no-golden",
    "none-golden",
    "no-prediction",
    "repeated-token-counts",
    "articles-normalise-to-empty",
    "cjk",
]


@pytest.mark.parametrize(("prediction", "golden", "exact", "cover", "token_f1"), METRIC_TABLE, ids=METRIC_IDS)
def test_metrics(prediction, golden, exact, cover, token_f1):
    assert em(prediction, golden) == exact
    assert cover_em(prediction, golden) == cover
    assert round(f1(prediction, golden), 4) == token_f1
    assert score_answer(prediction, golden) == {
        "em": em(prediction, golden),
        "cover_em": cover_em(prediction, golden),
        "f1": f1(prediction, golden),
    }


def test_metrics_return_floats():
    for metric in (em, cover_em, f1):
        assert type(metric("Paris", "Paris")) is float
        assert type(metric(None, "Paris")) is float


def test_f1_matches_flashrag_reference_on_a_hand_computed_case():
    # pred tokens: [barack, obama, was, president]; gold: [obama] -> P=1/4, R=1, F1=2*.25/1.25=0.4
    assert f1("Barack Obama was the president", "Obama") == pytest.approx(0.4)
    # best over golden: [barack obama] vs pred -> P=2/4, R=1 -> 2/3
    assert f1("Barack Obama was the president", ["Obama", "Barack Obama"]) == pytest.approx(2 / 3)


def _flashrag_normalize_answer(s):
    """FlashRAG's ``normalize_answer`` (flashrag/evaluator/utils.py), verbatim: the reference."""
    import re
    import string

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


# Word boundaries where the `regex` module and the standard `re` disagree: combining marks,
# superscript / fraction digits, zero-width (non-)joiners; and some where they agree.
UNICODE_BOUNDARIES = [
    "Se\u0301an",  # combining acute accent before "an"
    "an\u0301",  # combining mark after "an"
    "\u00b2an",  # superscript two
    "x\u00b3the y",  # superscript three
    "\u00bdan apple",  # vulgar fraction
    "a\u200dthe",  # zero-width joiner
    "the\u200d",
    "a\u200cb an",  # zero-width non-joiner
    "\u2167an",  # roman numeral eight
    "ca\u0301the\u0301dral a",
    "the\u00a0cat",  # no-break space
    "Beyoncé the singer",
]


@pytest.mark.parametrize("text", UNICODE_BOUNDARIES)
def test_normalisation_matches_flashrag_on_unicode_word_boundaries(text):
    assert normalize_answer(text) == _flashrag_normalize_answer(text)


def test_em_agrees_with_flashrag_where_the_regex_module_did_not():
    assert em("Se\u0301an", ["Se\u0301"]) == 1.0  # FlashRAG: "an" after a combining mark is a word
    assert normalize_answer("a\u200dthe") == _flashrag_normalize_answer("a\u200dthe")
    # ...and the other way: for `re` a superscript digit is a word character, so "the" stays.
    assert em("x\u00b3the", ["x\u00b3"]) == 0.0 and em("\u00b2an", ["\u00b2"]) == 0.0
