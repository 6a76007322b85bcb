"""Generation with a ``transformers`` model: our own decoding loop over the model's KV cache.

``model.generate`` re-reads the whole history at every turn of a multi-turn episode, prefills a
GRPO group's identical prompt once per sample, and keeps finished rows in the batch until the
longest one ends. On a CPU (where prefill is compute-bound) that was most of a rollout. This
backend keeps the model's own forward pass and its ``DynamicCache`` but decides what to feed:

* **prompt sharing** — identical prompts (a group's samples) are prefilled once, and the
  longest prefix shared by all new prompts (the instructions) once for all of them; the cache is
  then copied row by row;
* **KV reuse across turns** — when a row finishes its turn, its cache is kept (compacted to its
  real tokens) under the exact token sequence it holds; a later request that extends that
  sequence (the same episode plus inserted documents) prefills only the new tokens;
* **finished rows leave the batch** at once, so the batch shrinks as turns end;
* per-row stop strings, token budgets and EOS; each token's log-prob under the distribution it
  was sampled from (temperature / top-k / top-p / min-p applied with ``transformers``' own
  logits warpers); the returned ids are cut by :func:`~.backends.cut_generation`, the rule every
  backend shares.

Rows of one batch are left-padded; padding (also inside a row, where a shorter insertion meets a
longer one) is excluded by the attention mask and real tokens get consecutive position ids, so a
row computes exactly what it would alone. Caches are only reused within one backend object and
one set of weights: :class:`~.trl_adapter.SearchRollout` builds a new backend for every rollout.

Models whose cache is not one full-attention ``DynamicLayer`` per layer (sliding-window or hybrid
attention, state-space layers) fall back to ``model.generate`` without reuse.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backends import GenRequest, GenResult, SamplingConfig, cut_generation, resolve_eos_ids
from .hf_sampling import generate_kwargs, sample_next, supports_own_loop, warpers

__all__ = ["HFBackend", "ReuseStats"]


@dataclass
class ReuseStats:
    """Token counts of the calls so far: how much prefill sharing and cache reuse saved."""

    prompt_tokens: int = 0  # tokens of all requests' contexts
    prefilled_tokens: int = 0  # tokens actually run through the model before decoding
    reused_tokens: int = 0  # tokens taken from kept caches of earlier turns
    generated_tokens: int = 0


@dataclass
class _Kept:
    """A finished row's cache, compacted to its real tokens: per layer (keys, values) [H, L, D]."""

    tokens: list[int]
    kv: list[tuple[Any, Any]]


class _Batch:
    """Rows being decoded together: a ``DynamicCache``, its 2-D attention mask and, per row, the
    next position id and the token ids the cache holds."""

    def __init__(self, cache: Any, mask: Any, positions: list[int], tokens: list[list[int]]) -> None:
        self.cache, self.mask, self.positions, self.tokens = cache, mask, positions, tokens


class HFBackend:
    """Batched generation with a ``transformers`` causal LM (see the module docstring).

    ``batch_size`` bounds the rows decoded together; ``reuse_cache`` keeps finished rows' caches
    for the next call; ``prefill_chunk`` bounds the tokens per row fed in one forward pass;
    ``own_loop=False`` uses ``model.generate`` (no sharing, no reuse: the reference, and the way
    for models this loop does not support).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 64,
        eos_token_ids: Sequence[int] | None = None,
        reuse_cache: bool = True,
        prefill_chunk: int = 512,
        own_loop: bool = True,
    ) -> None:
        if batch_size < 1 or prefill_chunk < 1:
            raise ValueError("batch_size and prefill_chunk must be >= 1")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos_token_ids = resolve_eos_ids(tokenizer, eos_token_ids)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        self.reuse_cache, self.prefill_chunk = reuse_cache, prefill_chunk
        self.stats = ReuseStats()
        self._kept: list[_Kept] = []
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._own_loop = own_loop and supports_own_loop(model)

    # -- public API ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        if sampling.ignore_eos:
            raise ValueError("ignore_eos is only supported by the vLLM backends")
        if not self._own_loop:
            return self._generate_stock(requests, sampling)
        kept, self._kept = self._kept, []
        results: list[GenResult | None] = [None] * len(requests)
        for b in range(0, len(requests), self.batch_size):
            idx = list(range(b, min(b + self.batch_size, len(requests))))
            for i, res in zip(idx, self._run([requests[i] for i in idx], sampling, kept), strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget kept caches (call after the weights change)."""
        self._kept = []

    # -- one batch -------------------------------------------------------------------------------
    def _run(self, reqs: list[GenRequest], sampling: SamplingConfig, kept: list[_Kept]) -> list[GenResult]:
        import torch

        for r in reqs:
            if not r.prompt_ids:
                raise ValueError("a generation request needs at least one prompt token")
        with torch.no_grad():
            batch, logits = self._prefill(reqs, kept)
            return self._decode(reqs, sampling, batch, logits)

    def _prefill(self, reqs: list[GenRequest], kept: list[_Kept]):
        """Fill the cache with every row's context; return the batch and each row's next-token logits."""
        matches = [self._match(r.prompt_ids, kept) for r in reqs]
        # Rows are deduplicated: identical contexts with the same kept base are prefilled once.
        unique: dict[tuple, int] = {}
        row_of: list[int] = []
        for r, m in zip(reqs, matches, strict=True):
            key = (id(m), tuple(r.prompt_ids))
            row_of.append(unique.setdefault(key, len(unique)))
        bases: list[_Kept | None] = [None] * len(unique)
        contexts: list[list[int]] = [[] for _ in unique]
        for (_, ctx), u in unique.items():
            contexts[u] = list(ctx)
        for r_i, u in enumerate(row_of):
            bases[u] = matches[r_i]
        shared = self._shared_prefix([c for c, b in zip(contexts, bases, strict=True) if b is None])
        if shared is not None:
            bases = [shared if b is None else b for b in bases]
        news = [c[len(b.tokens) :] if b is not None else c for c, b in zip(contexts, bases, strict=True)]
        self.stats.prompt_tokens += sum(len(r.prompt_ids) for r in reqs)
        self.stats.reused_tokens += sum(len(bases[u].tokens) if bases[u] else 0 for u in row_of)
        batch = self._assemble(bases)
        logits = self._feed(batch, news)
        self.stats.prefilled_tokens += sum(len(n) for n in news)
        if len(unique) != len(reqs):
            self._select(batch, row_of)
            logits = logits[row_of]
        return batch, logits

    def _match(self, ids: list[int], kept: list[_Kept]) -> _Kept | None:
        """The longest kept cache whose tokens are a strict prefix of ``ids``."""
        if not self.reuse_cache:
            return None
        best = None
        for k in kept:
            n = len(k.tokens)
            if n < len(ids) and (best is None or n > len(best.tokens)) and ids[:n] == k.tokens:
                best = k
        return best

    def _shared_prefix(self, contexts: list[list[int]]) -> _Kept | None:
        """Prefill the longest prefix common to several new contexts once (the instructions)."""
        if len(contexts) < 2:
            return None
        first, n = contexts[0], min(len(c) for c in contexts) - 1  # keep >= 1 new token per row
        for c in contexts[1:]:
            i = 0
            while i < n and c[i] == first[i]:
                i += 1
            n = i
        if n < 8:
            return None
        batch = self._assemble([None])
        self._feed(batch, [first[:n]])
        self.stats.prefilled_tokens += n
        return self._compact(batch, 0, n)

    # -- cache plumbing ----------------------------------------------------------------------------
    def _assemble(self, bases: list[_Kept | None]) -> _Batch:
        """A batch whose row ``i`` starts from ``bases[i]``'s cache (left-padded) or empty."""
        import torch

        device = self._device()
        width = max((len(b.tokens) for b in bases if b is not None), default=0)
        mask = torch.zeros((len(bases), width), dtype=torch.long, device=device)
        cache = self._new_cache()
        if width:
            template = next(b for b in bases if b is not None).kv
            for layer, (k0, v0) in enumerate(template):
                keys = k0.new_zeros((len(bases), k0.shape[0], width, k0.shape[2]))
                values = v0.new_zeros((len(bases), v0.shape[0], width, v0.shape[2]))
                for row, b in enumerate(bases):
                    if b is not None and b.tokens:
                        k, v = b.kv[layer]
                        keys[row, :, width - k.shape[1] :] = k
                        values[row, :, width - v.shape[1] :] = v
                cache.update(keys, values, layer)
            for row, b in enumerate(bases):
                if b is not None and b.tokens:
                    mask[row, width - len(b.tokens) :] = 1
        return _Batch(
            cache,
            mask,
            [len(b.tokens) if b is not None else 0 for b in bases],
            [list(b.tokens) if b is not None else [] for b in bases],
        )

    def _feed(self, batch: _Batch, news: list[list[int]]):
        """Run each row's new tokens through the model (right-aligned, in chunks); return the
        logits after each row's last token."""
        import torch

        device = self._device()
        width = max(len(n) for n in news)
        logits = None
        for start in range(0, width, self.prefill_chunk):
            end = min(width, start + self.prefill_chunk)
            ids = torch.full((len(news), end - start), self.pad_token_id, dtype=torch.long)
            valid = torch.zeros((len(news), end - start), dtype=torch.long)
            pos = torch.zeros((len(news), end - start), dtype=torch.long)
            for row, new in enumerate(news):
                # Row tokens are right-aligned in the block [0, width).
                lo = width - len(new)
                for col in range(max(start, lo), end):
                    ids[row, col - start] = new[col - lo]
                    valid[row, col - start] = 1
                    pos[row, col - start] = batch.positions[row] + (col - lo)
            logits = self._forward(batch, ids.to(device), valid.to(device), pos.to(device))
        for row, new in enumerate(news):
            batch.positions[row] += len(new)
            batch.tokens[row].extend(new)
        return logits

    def _forward(self, batch: _Batch, ids, valid, pos):
        import torch

        batch.mask = torch.cat([batch.mask, valid], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=batch.mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: batch.cache},
        )
        return out.logits[:, -1, :].float()

    def _select(self, batch: _Batch, rows: list[int]) -> None:
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.mask = batch.mask[index]
        batch.positions = [batch.positions[r] for r in rows]
        batch.tokens = [list(batch.tokens[r]) for r in rows]

    def _compact(self, batch: _Batch, row: int, keep: int) -> _Kept:
        """Row ``row``'s first ``keep`` real tokens and their keys/values, without padding."""
        cols = batch.mask[row].nonzero().squeeze(-1)[:keep]
        kv = []
        for layer in batch.cache.layers:
            kv.append((layer.keys[row][:, cols].clone(), layer.values[row][:, cols].clone()))
        return _Kept(batch.tokens[row][:keep], kv)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache()

    def _device(self):
        return next(self.model.parameters()).device

    # -- decoding ---------------------------------------------------------------------------------
    def _decode(self, reqs: list[GenRequest], sampling: SamplingConfig, batch: _Batch, logits):
        import torch

        n = len(reqs)
        gen: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        results: list[GenResult | None] = [None] * n
        processors = warpers(sampling)
        eos = set(self.eos_token_ids)
        windows = [max((len(s) for s in r.stop), default=0) + 4 for r in reqs]
        active = list(range(n))  # request index of each batch row
        while True:
            tokens, token_logps = sample_next(logits, sampling, processors, batch.tokens)
            still = []
            for row, i in enumerate(active):
                tok = tokens[row]
                gen[i].append(tok)
                logps[i].append(token_logps[row])
                req = reqs[i]
                done = tok in eos or len(gen[i]) >= req.max_tokens
                if not done and req.stop:
                    tail = self.tokenizer.decode(gen[i][-windows[i] :], skip_special_tokens=False)
                    done = any(s in tail for s in req.stop)
                if done:
                    results[i] = self._finish(req, gen[i], logps[i], batch, row)
                else:
                    still.append(row)
            self.stats.generated_tokens += len(active)
            if not still:
                break
            if len(still) != len(active):
                self._select(batch, still)
                active = [active[r] for r in still]
                tokens = [tokens[r] for r in still]
            ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1).to(batch.mask.device)
            valid = torch.ones_like(ids)
            pos = torch.tensor(batch.positions, dtype=torch.long).unsqueeze(1).to(batch.mask.device)
            for row, tok in enumerate(tokens):
                batch.positions[row] += 1
                batch.tokens[row].append(tok)
            logits = self._forward(batch, ids, valid, pos)
        return results  # type: ignore[return-value]

    def _finish(self, req: GenRequest, ids: list[int], logps: list[float], batch: _Batch, row: int):
        res = cut_generation(
            self.tokenizer,
            ids,
            logps,
            stop=req.stop,
            max_tokens=req.max_tokens,
            eos_token_ids=self.eos_token_ids,
        )
        if self.reuse_cache:
            # The cache holds the context and every sampled token but the last (never fed); keep the
            # context and the turn's tokens up to, not including, its last kept one, so the next
            # request always has at least one new token to feed.
            keep = len(req.prompt_ids) + max(len(res.token_ids) - 1, 0)
            self._kept.append(self._compact(batch, row, keep))
        return res

    # -- fallback ----------------------------------------------------------------------------------
    def _generate_stock(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        """``model.generate`` (left-padded batches per stop-string set), for caches we cannot reuse."""
        import torch

        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(tuple(req.stop), []).append(i)
        device = self._device()
        for stop, indices in groups.items():
            for b in range(0, len(indices), self.batch_size):
                chunk = indices[b : b + self.batch_size]
                reqs = [requests[i] for i in chunk]
                width = max(len(r.prompt_ids) for r in reqs)
                ids = torch.full((len(reqs), width), self.pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(reqs), width), dtype=torch.long)
                for row, req in enumerate(reqs):
                    ids[row, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
                    attention[row, width - len(req.prompt_ids) :] = 1
                kwargs = generate_kwargs(
                    sampling, max(r.max_tokens for r in reqs), self.pad_token_id, self.eos_token_ids
                )
                if stop:
                    kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
                with torch.no_grad():
                    out = self.model.generate(
                        input_ids=ids.to(device), attention_mask=attention.to(device), **kwargs
                    )
                    logps = self.model.compute_transition_scores(
                        out.sequences, out.scores, normalize_logits=True
                    )
                for i, gen, lp, req in zip(
                    chunk, out.sequences[:, width:].tolist(), logps.float().cpu().tolist(), reqs, strict=True
                ):
                    results[i] = cut_generation(
                        self.tokenizer,
                        gen,
                        lp,
                        stop=stop,
                        max_tokens=req.max_tokens,
                        eos_token_ids=self.eos_token_ids,
                    )
                    self.stats.generated_tokens += len(results[i].token_ids)
        return results  # type: ignore[return-value]
