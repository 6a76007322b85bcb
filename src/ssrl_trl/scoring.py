"""Answer metrics with FlashRAG's / SQuAD's definitions.

Training rewards and the evaluation tool both score through this module, so a training EM and
an evaluation EM can never disagree. The normalisation is the SQuAD convention FlashRAG uses:
lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

The articles are removed with the standard library's ``re``, exactly as FlashRAG's
``normalize_answer`` does: the third-party ``regex`` module draws word boundaries differently
around combining marks, superscript digits and zero-width joiners (it counts them as word
characters), so ``"Se\\u0301an"`` would keep its ``an`` there and lose it in FlashRAG.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "as_golden_list",
    "cover_em",
    "em",
    "f1",
    "normalize_answer",
    "YES_NO_ANSWERS",
    "score_answer",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")  # FlashRAG: re.sub(r"\b(a|an|the)\b", " ", text)
_PUNCT = str.maketrans("", "", string.punctuation)
#: answers a passage never states word for word (they are inferred): F1 scores them only when equal,
#: and question selection never counts them as reachable (``ssrl_trl.reachable``)
YES_NO_ANSWERS = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """SQuAD/FlashRAG normalisation.

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = str(text).lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def as_golden_list(golden: Any) -> list[str]:
    """Golden answers as a list of strings.

    Accepts a string, any iterable of strings (list, tuple, numpy array from parquet), or a
    mapping with a ``target`` key (the veRL / Search-R1 ``reward_model.ground_truth`` layout).
    ``None`` and empty values give ``[]``; non-string items are converted with ``str``.
    """
    if golden is None:
        return []
    if isinstance(golden, Mapping):
        if "target" not in golden:
            raise ValueError(f"golden answer mapping needs a 'target' key, got keys {sorted(golden)}")
        return as_golden_list(golden["target"])
    if isinstance(golden, str):
        return [golden]
    if isinstance(golden, Iterable):
        return [str(g) for g in golden if g is not None]
    return [str(golden)]


def em(prediction: str | None, golden: Any) -> float:
    """1.0 if the normalised prediction equals any normalised golden answer.

    >>> em("the Beatles", ["Beatles", "The Rolling Stones"])
    1.0
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in as_golden_list(golden)))


def cover_em(prediction: str | None, golden: Any) -> float:
    """FlashRAG's ``acc``: 1.0 if a normalised golden answer is contained in the prediction.

    >>> cover_em("It was Paris, France", "paris")
    1.0
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) in pred for g in as_golden_list(golden)))


def f1(prediction: str | None, golden: Any) -> float:
    """Best token F1 over golden answers, with FlashRAG's special case: when either side
    normalises to yes/no/noanswer, the two must be equal to score at all.

    >>> round(f1("new york city", "new york"), 3)
    0.8
    >>> f1("yes", "no")
    0.0
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    pred_tokens = pred.split()
    best = 0.0
    for g in as_golden_list(golden):
        gold = normalize_answer(g)
        if (pred in YES_NO_ANSWERS or gold in YES_NO_ANSWERS) and pred != gold:
            continue
        common = Counter(pred_tokens) & Counter(gold.split())
        same = sum(common.values())
        if same == 0:
            continue
        precision = same / len(pred_tokens)
        recall = same / len(gold.split())
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def score_answer(prediction: str | None, golden: Any) -> dict[str, float]:
    """All three metrics at once (the evaluation tool's per-question record)."""
    return {
        "em": em(prediction, golden),
        "cover_em": cover_em(prediction, golden),
        "f1": f1(prediction, golden),
    }
