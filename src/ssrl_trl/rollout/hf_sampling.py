"""Token sampling for the ``transformers`` backend: ``transformers``' own logits warpers applied
in ``generate``'s order, the next token with its log-prob under the processed distribution, the
``model.generate`` arguments of the reference path, and which models the own loop supports."""

from __future__ import annotations

from typing import Any

from .backends import SamplingConfig

__all__ = ["generate_kwargs", "sample_next", "supports_own_loop", "warpers"]


def generate_kwargs(
    sampling: SamplingConfig, max_new: int, pad_token_id: int, eos_token_ids: list[int]
) -> dict[str, Any]:
    """``model.generate`` arguments for one batch (the reference path and the fallback)."""
    greedy = sampling.temperature == 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new,
        "do_sample": not greedy,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_ids,
        "output_scores": True,
        "return_dict_in_generate": True,
        "use_cache": True,
    }
    if not greedy:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
        if sampling.min_p:
            kwargs["min_p"] = sampling.min_p
    if sampling.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = sampling.repetition_penalty
    return kwargs


def supports_own_loop(model: Any) -> bool:
    """Full attention in every layer (no sliding window, no linear or state-space layers)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "is_encoder_decoder", False):
        return False
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return not (getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))


def warpers(sampling: SamplingConfig) -> list[Any]:
    """``transformers``' own warpers, in ``generate``'s order (temperature, top-k, top-p, min-p)."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if sampling.temperature == 0:
        return []
    out: list[Any] = []
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        out.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(sampling.top_p))
    if sampling.min_p:
        out.append(MinPLogitsWarper(sampling.min_p))
    return out


def sample_next(logits, sampling: SamplingConfig, warpers: list[Any], histories: list[list[int]]):
    """Next token per row and its log-prob under the processed distribution."""
    import torch

    scores = logits
    if sampling.repetition_penalty != 1.0:
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        width = max(len(h) for h in histories)
        # Pad each history with its own first token: repeats change nothing in the penalty.
        hist = torch.tensor([h + [h[0]] * (width - len(h)) for h in histories], device=scores.device)
        scores = RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)(hist, scores)
    if sampling.temperature == 0:
        logp = torch.log_softmax(scores, dim=-1)
        tokens = scores.argmax(dim=-1)
    else:
        for warper in warpers:
            scores = warper(None, scores)
        logp = torch.log_softmax(scores, dim=-1)
        tokens = torch.multinomial(logp.exp(), 1).squeeze(-1)
    chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens.tolist(), chosen.tolist()
