"""Reward functions for TRL's GRPOTrainer: SSRL, Search-R1 and R1-Searcher.

Each reward is a picklable callable class with a class-level ``__name__`` (TRL logs
``rewards/<__name__>``) called as ``f(prompts, completions, **kwargs) -> list[float]``. Golden
answers come from a dataset column (``golden_answers`` unless ``golden_key`` says otherwise);
counts the rollout already knows (``num_searches``, ``truncated``) come from its extras, and are
recomputed from the text only when a reward is used without the ssrl-trl rollout.

Every reward reads a tag set (``tags``, default: its method's) and can be re-bound to another
with :meth:`with_tags`; a recipe's rewards are bound to the recipe's tags, so renamed tags are
scored as they are prompted. The format reward asks the tag set for its grammar
(``TagSet.format_check``), never a method's name.

A reward never returns NaN and never raises on model output. Missing golden answers are a bug in
the data, not model behaviour, so they raise with the column name.

| method      | reward                    | formula                                                        |
|-------------|---------------------------|----------------------------------------------------------------|
| SSRL        | ``SSRLReward``            | 0.9·EM + 0.1·format_score                                      |
| Search-R1   | ``SearchR1EMReward``      | EM                                                             |
| Search-R1   | ``SearchR1FormatReward``  | 1 / 0.8 / 0.2 / 0.1 / 0 by (correct, format ok, parsable)      |
| R1-Searcher | ``R1SearcherStage1Reward``| 0.5·[searched] + 0.5·[format] + answer_weight·F1               |
| R1-Searcher | ``R1SearcherStage2Reward``| F1 if format ok else −2                                        |
| any         | ``FormatReward``, ``TagPresenceReward``, ``SearchCountReward``, ``RetrievalHitReward``, ``AnswerF1Reward``, ``LengthGuardReward`` | shaping |
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from .formats import r1_searcher_format_valid, search_r1_format_valid, ssrl_format_score
from .protocol import R1_SEARCHER, SEARCH_R1, SSRL, TagSet, extract_answer, find_spans, get_tag_set
from .scoring import cover_em, em, f1

__all__ = [
    "AnswerF1Reward",
    "FormatReward",
    "LengthGuardReward",
    "R1SearcherStage1Reward",
    "R1SearcherStage2Reward",
    "RetrievalHitReward",
    "SSRLReward",
    "SearchCountReward",
    "SearchR1EMReward",
    "SearchR1FormatReward",
    "TagPresenceReward",
    "completion_text",
]


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the assistant messages of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        parts = []
        for message in completion:
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content", "")
                parts.append(content if isinstance(content, str) else "")
        return "".join(parts)
    return ""


class _Reward:
    """Shared plumbing: text extraction, golden-answer lookup, metric logging."""

    __name__ = "reward"

    def __init__(self, golden_key: str = "golden_answers", tags: TagSet | str | dict = SEARCH_R1) -> None:
        self.golden_key = golden_key
        self.tags = get_tag_set(tags)

    def with_tags(self, tags: TagSet | str | dict) -> _Reward:
        """The same reward scoring against ``tags`` (a copy; this one is unchanged)."""
        clone = copy.copy(self)
        clone.tags = get_tag_set(tags)
        return clone

    def _golden(self, kwargs: dict, n: int) -> list:
        if self.golden_key not in kwargs:
            raise KeyError(
                f"{self.__name__}: no {self.golden_key!r} column reached the reward; available: {sorted(kwargs)}. "
                "Set golden_key or keep remove_unused_columns=False."
            )
        golden = kwargs[self.golden_key]
        if len(golden) != n:
            raise ValueError(f"{self.__name__}: {len(golden)} golden answers for {n} completions")
        return list(golden)

    def _answers(self, kwargs: dict, texts: list[str]) -> list[str | None]:
        """The answer of each completion: the one the ssrl-trl rollout recorded (``final_answer``,
        parsed from the model's own final turn, ``None`` when it did not answer), so the reward
        scores what evaluation scores; without the rollout, the last answer block of the text."""
        given = kwargs.get("final_answer")
        if given is not None:
            if len(given) != len(texts):
                raise ValueError(f"{self.__name__}: {len(given)} final answers for {len(texts)} completions")
            return [None if a is None else str(a) for a in given]
        return [extract_answer(t, self.tags) for t in texts]

    def _num_searches(self, kwargs: dict, texts: list[str]) -> list[int]:
        given = kwargs.get("num_searches")
        if given is not None and len(given) == len(texts):
            return [int(x) for x in given]
        return [len(find_spans(t, self.tags.search)) for t in texts]

    def _log(self, kwargs: dict, **values: list[float]) -> None:
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is None:
            return
        for name, vals in values.items():
            if vals:
                log_metric(f"{self.__name__}/{name}", float(sum(vals) / len(vals)))

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in (completions or [])]
        return self.score(texts, kwargs)

    def score(self, texts: list[str], kwargs: dict) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError


class SSRLReward(_Reward):
    """SSRL: ``em_weight * EM + format_weight * ssrl_format_score`` (defaults 0.9 / 0.1), in [0, 1]."""

    __name__ = "ssrl"

    def __init__(self, em_weight: float = 0.9, format_weight: float = 0.1, max_think: int = 8, **kw) -> None:
        kw.setdefault("tags", SSRL)
        super().__init__(**kw)
        self.em_weight, self.format_weight, self.max_think = em_weight, format_weight, max_think

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        ems = [em(a, g) for a, g in zip(self._answers(kwargs, texts), golden, strict=True)]
        fmts = [ssrl_format_score(t, self.tags, max_think=self.max_think) for t in texts]
        self._log(kwargs, em=ems, format=fmts, searches=self._num_searches(kwargs, texts))
        return [self.em_weight * e + self.format_weight * f for e, f in zip(ems, fmts, strict=True)]


class SearchR1EMReward(_Reward):
    """Search-R1's outcome reward: 1.0 when the last answer exactly matches a golden answer."""

    __name__ = "search_r1_em"

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        ems = [em(a, g) for a, g in zip(self._answers(kwargs, texts), golden, strict=True)]
        self._log(kwargs, em=ems, searches=self._num_searches(kwargs, texts))
        return ems


class SearchR1FormatReward(_Reward):
    """Search-R1's format-aware outcome reward.

    ``correct_format`` when the answer is right and the sequence grammar holds, ``correct`` when
    right with a bad format, ``format_only`` when wrong with a good format, ``parsable`` when wrong
    but an answer block was found, else ``fail``.
    """

    __name__ = "search_r1_format"

    def __init__(
        self,
        correct_format: float = 1.0,
        correct: float = 0.8,
        format_only: float = 0.2,
        parsable: float = 0.1,
        fail: float = 0.0,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.values = (correct_format, correct, format_only, parsable, fail)

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        correct_format, correct, format_only, parsable, fail = self.values
        out, ems, fmts = [], [], []
        for text, gold, answer in zip(texts, golden, self._answers(kwargs, texts), strict=True):
            hit = em(answer, gold) == 1.0
            ok = search_r1_format_valid(text, self.tags)
            ems.append(float(hit))
            fmts.append(float(ok))
            if hit:
                out.append(correct_format if ok else correct)
            elif ok:
                out.append(format_only)
            else:
                out.append(parsable if answer is not None else fail)
        self._log(kwargs, em=ems, format=fmts, searches=self._num_searches(kwargs, texts))
        return out


class R1SearcherStage1Reward(_Reward):
    """R1-Searcher stage 1, which teaches the model to call retrieval.

    ``retrieval_bonus`` when at least one well-formed query was issued, ``format_bonus`` when the
    R1-Searcher format holds, plus ``answer_weight * F1`` (0.5 by default; set 0 for the paper's
    retrieval+format-only variant).
    """

    __name__ = "r1_searcher_stage1"

    def __init__(
        self, retrieval_bonus: float = 0.5, format_bonus: float = 0.5, answer_weight: float = 0.5, **kw
    ):
        kw.setdefault("tags", R1_SEARCHER)
        super().__init__(**kw)
        self.retrieval_bonus, self.format_bonus, self.answer_weight = (
            retrieval_bonus,
            format_bonus,
            answer_weight,
        )

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        searches = self._num_searches(kwargs, texts)
        fmts = [float(r1_searcher_format_valid(t, self.tags)) for t in texts]
        f1s = [f1(a, g) for a, g in zip(self._answers(kwargs, texts), golden, strict=True)]
        self._log(kwargs, f1=f1s, format=fmts, searches=searches)
        return [
            self.retrieval_bonus * (n > 0) + self.format_bonus * fm + self.answer_weight * s
            for n, fm, s in zip(searches, fmts, f1s, strict=True)
        ]


class R1SearcherStage2Reward(_Reward):
    """R1-Searcher stage 2: answer F1 when the format holds, else ``format_penalty`` (default −2)."""

    __name__ = "r1_searcher_stage2"

    def __init__(self, format_penalty: float = -2.0, **kw) -> None:
        kw.setdefault("tags", R1_SEARCHER)
        super().__init__(**kw)
        self.format_penalty = format_penalty

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        fmts = [r1_searcher_format_valid(t, self.tags) for t in texts]
        f1s = [f1(a, g) for a, g in zip(self._answers(kwargs, texts), golden, strict=True)]
        self._log(kwargs, f1=f1s, format=[float(x) for x in fmts], searches=self._num_searches(kwargs, texts))
        return [s if ok else self.format_penalty for s, ok in zip(f1s, fmts, strict=True)]


class FormatReward(_Reward):
    """Format alone, in [0, 1]: the tag set's own format check (``tags``: ssrl, search_r1,
    r1_searcher or a custom tag set; SSRL's check is graded, the others are 0 or 1).

    The shaping term an untrained small model needs: exact match alone is all-zero at the start.
    """

    __name__ = "format"

    def score(self, texts, kwargs):
        return [self.tags.format_score(t) for t in texts]


class TagPresenceReward(_Reward):
    """Dense partial format credit in [0, 1]: the fraction of the method's blocks (think, search,
    information, answer) that appear complete at least once.

    Exact match and strict format checks are all-zero on a small untrained model, which leaves
    GRPO without a learning signal; this term rewards each step towards the format.
    """

    __name__ = "tag_presence"

    def score(self, texts, kwargs):
        pairs = list(self.tags.pairs().values())
        return [sum(bool(find_spans(t, pair)) for pair in pairs) / len(pairs) for t in texts]


class SearchCountReward(_Reward):
    """``bonus`` when the number of searches is within [min_searches, max_searches], else
    ``-penalty``. With min 1 it rewards searching at all; with a low max it discourages spam."""

    __name__ = "search_count"

    def __init__(
        self, min_searches: int = 1, max_searches: int = 4, bonus: float = 0.1, penalty: float = 0.1, **kw
    ):
        super().__init__(**kw)
        if min_searches > max_searches:
            raise ValueError(f"min_searches ({min_searches}) > max_searches ({max_searches})")
        self.min_searches, self.max_searches, self.bonus, self.penalty = (
            min_searches,
            max_searches,
            bonus,
            penalty,
        )

    def score(self, texts, kwargs):
        return [
            self.bonus if self.min_searches <= n <= self.max_searches else -self.penalty
            for n in self._num_searches(kwargs, texts)
        ]


class RetrievalHitReward(_Reward):
    """``bonus`` when a golden answer appears (cover-EM, normalised) in the text of an
    information block of the completion, else 0: a dense signal for searching well that does not
    depend on the answer. A query that copies a worked example instead of the question finds
    nothing useful and earns nothing, so a small model cannot collapse onto it for the format
    reward alone. For self-search it pays for self-written information that contains the answer."""

    __name__ = "retrieval_hit"

    def __init__(self, bonus: float = 0.2, **kw) -> None:
        super().__init__(**kw)
        self.bonus = bonus

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        hits = [
            any(cover_em(span.content(t), g) for span in find_spans(t, self.tags.information))
            for t, g in zip(texts, golden, strict=True)
        ]
        self._log(kwargs, rate=[float(h) for h in hits])
        return [self.bonus if h else 0.0 for h in hits]


class AnswerF1Reward(_Reward):
    """``weight * F1`` of the final answer against the golden answers (token overlap, normalised
    as in scoring; 0 without an answer): partial credit for an answer that overlaps the gold span
    without matching it ("Paris, France" for "Paris"). Exact match pays nothing until the span is
    exact, so a small model that has found the document but writes a longer or shorter answer gets
    no signal from EM alone; this gives it a gradient toward the span. Shaping: log it separately
    and keep the method's outcome reward."""

    __name__ = "answer_f1"

    def __init__(self, weight: float = 0.5, **kw) -> None:
        super().__init__(**kw)
        self.weight = weight

    def score(self, texts, kwargs):
        golden = self._golden(kwargs, len(texts))
        f1s = [f1(a, g) for a, g in zip(self._answers(kwargs, texts), golden, strict=True)]
        self._log(kwargs, f1=f1s)
        return [self.weight * v for v in f1s]


class LengthGuardReward(_Reward):
    """``-penalty`` for a trajectory cut by a token or turn budget (rollout extra ``truncated``),
    or, without the rollout, for a completion with no complete answer block; else 0."""

    __name__ = "length_guard"

    def __init__(self, penalty: float = 0.5, **kw) -> None:
        super().__init__(**kw)
        self.penalty = penalty

    def score(self, texts, kwargs):
        truncated = kwargs.get("truncated")
        if truncated is None or len(truncated) != len(texts):
            truncated = [extract_answer(t, self.tags) is None for t in texts]
        return [-self.penalty if bool(t) else 0.0 for t in truncated]
