"""Uncertainty signals of a self-search trajectory, for routing hybrid self/real search.

Three token groups of the sampled (model) tokens are scored:

* ``answer`` — the tokens of the content of the last complete answer block;
* ``info`` — the self-written ``<information>`` tokens (sampled but masked by
  :class:`~ssrl_trl.environments.SelfSearchEnv`, i.e. ``env_mask == 0`` inside a model segment);
  a completion without one falls back to all sampled tokens;
* ``completion`` — every sampled token.

For each group two statistics are reported:

* ``*_nll`` — mean negative log-prob of the sampled tokens, read from ``Trajectory.logprobs``.
  The backend returns the log-prob of the token it picked under the distribution it sampled from
  (temperature and top-p applied), not the full distribution, so this is a *proxy* for entropy;
* ``*_entropy`` — mean entropy (nats) of the model's full next-token distribution at those
  positions, from one teacher-forced forward pass over prompt + completion (needs the HF model;
  temperature 1, no filtering).

A trajectory without an answer has ``None`` for the answer signals; routing treats ``None`` as
maximally uncertain. ``answer_disagreement`` turns a few sampled answers into
``1 - (share of the most common normalised answer)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..detok import token_texts
from ..protocol import TagSet, find_spans
from ..scoring import normalize_answer
from ..trajectory import Trajectory

__all__ = ["SIGNALS", "answer_disagreement", "token_entropies", "trajectory_signals"]

#: Every signal name a run can route on (``disagreement`` needs extra samples).
SIGNALS = (
    "answer_entropy",
    "answer_nll",
    "info_entropy",
    "info_nll",
    "completion_entropy",
    "completion_nll",
    "disagreement",
)


def _sampled(traj: Trajectory) -> list[int]:
    return [i for seg in traj.segments if seg.kind == "model" for i in range(seg.start, seg.end)]


def _answer_tokens(traj: Trajectory, tokenizer: Any, tags: TagSet, sampled: list[int]) -> list[int]:
    texts = token_texts(tokenizer, traj.completion_ids)
    spans = [s for s in find_spans(texts.text, tags.answer) if s.closed]
    if not spans:
        return []
    lo, hi = spans[-1].inner_start, spans[-1].inner_end
    if texts.text[lo:hi].strip() == "":
        return []
    keep = set(sampled)
    return [i for i, (s, e) in enumerate(texts.offsets) if s < hi and e > lo and i in keep]


def token_groups(traj: Trajectory, tokenizer: Any, tags: TagSet) -> dict[str, list[int]]:
    """Completion positions of the ``answer``, ``info`` and ``completion`` groups."""
    sampled = _sampled(traj)
    info = [i for i in sampled if traj.env_mask[i] == 0]
    return {
        "answer": _answer_tokens(traj, tokenizer, tags, sampled) if traj.answer is not None else [],
        "info": info or sampled,
        "completion": sampled,
    }


def token_entropies(model: Any, traj: Trajectory) -> list[float]:
    """Entropy (nats) of the model's next-token distribution at every completion position."""
    import torch

    if not traj.completion_ids:
        return []
    device = next(model.parameters()).device
    ids = torch.tensor([traj.prompt_ids + traj.completion_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(traj.prompt_ids) - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
    return ent.cpu().tolist()


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def trajectory_signals(
    traj: Trajectory, tokenizer: Any, tags: TagSet, *, model: Any = None
) -> dict[str, float | None]:
    """All ``*_nll`` signals, plus ``*_entropy`` when ``model`` is given."""
    groups = token_groups(traj, tokenizer, tags)
    out: dict[str, float | None] = {}
    for name, idx in groups.items():
        out[f"{name}_nll"] = _mean([-traj.logprobs[i] for i in idx])
    if model is not None:
        ent = token_entropies(model, traj)
        for name, idx in groups.items():
            out[f"{name}_entropy"] = _mean([ent[i] for i in idx])
    return out


def answer_disagreement(answers: Sequence[str | None]) -> float | None:
    """``1 - max share`` of one normalised answer among ``answers`` (a missing answer is its own
    bucket); 0 when all agree. ``None`` for no answers.

    >>> answer_disagreement(["Paris", "paris.", "Lyon", None])
    0.5
    """
    if not answers:
        return None
    buckets = Counter(None if a is None else normalize_answer(a) for a in answers)
    return 1.0 - max(buckets.values()) / len(answers)
