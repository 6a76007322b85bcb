"""A deterministic synthetic Wikipedia-like corpus (and query set) for measuring indexes at scale.

The real wiki-18 dump (21M passages) is not available everywhere an index has to be sized, so
the scale benchmark generates a stand-in with the statistics that drive an inverted index's
size and speed:

* **passages of ~100 words** in the FlashRAG layout ``{"id", "contents": "\\"Title\\"\\ntext"}``:
  wiki-18 cuts each article into 100-word chunks, so every passage but an article's last has
  about 100 words and the last one is shorter (uniform 10-100 here);
* **Zipfian vocabulary**: word ranks drawn with ``P(r) ~ 1 / r**s`` (``s = 1.1``) over a few
  hundred thousand types, the top ranks being real English function words (so stopword
  removal drops about as much as on real text) and the rest pronounceable consonant-vowel
  strings, shorter for the frequent ranks;
* **titles** of 1-3 capitalised words shared by the passages of one article (1-6 passages).

Generation is vectorised per block of :data:`BLOCK` passages, each block seeded from
``(seed, block number)``: the same seed gives byte-identical output, the first ``n`` passages
do not depend on how many follow, and nothing but one block is ever in memory.

    python -m ssrl_trl.retrieval.synthetic --n 1000000 --out /tmp/synth_1m.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCK",
    "SyntheticCorpus",
    "synthetic_queries",
    "synthetic_vectors",
    "write_corpus",
]

#: passages generated per seeded block (part of the output's definition: changing it changes the corpus)
BLOCK = 4096

# The most frequent English words, in rough frequency order, take the top ranks.
_FUNCTION_TEXT = (
    "the of and in to a is was for as on by with he that at from his it an were are which "
    "this be or has also had first its their not but after one new two have they who her "
    "she been other when into there"
)
_FUNCTION_WORDS = tuple(_FUNCTION_TEXT.split())
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70


def _word(rank: int) -> str:
    """The word of a (non-function-word) rank: bijective base-70 digits as syllables, so the
    frequent ranks get the short words and every rank a distinct one."""
    n, parts = rank + 1, []
    while n > 0:
        n -= 1
        n, digit = divmod(n, len(_SYLLABLES))
        parts.append(_SYLLABLES[digit])
    return "".join(reversed(parts))


@dataclass(frozen=True)
class SyntheticCorpus:
    """``n`` passages; iterate :meth:`records` for ``(id, contents)`` pairs, in id order."""

    n: int
    seed: int = 0
    vocab_size: int = 300_000
    zipf_s: float = 1.1

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.vocab_size <= len(_FUNCTION_WORDS):
            raise ValueError(f"vocab_size must exceed {len(_FUNCTION_WORDS)}, got {self.vocab_size}")
        if self.zipf_s <= 0:
            raise ValueError(f"zipf_s must be > 0, got {self.zipf_s}")

    @cached_property
    def vocab(self) -> Any:
        """Word of each rank, as a numpy object array (fast fancy indexing + ``str.join``)."""
        import numpy as np

        words = list(_FUNCTION_WORDS)
        words += [_word(r) for r in range(self.vocab_size - len(words))]
        return np.array(words, dtype=object)

    @cached_property
    def cdf(self) -> Any:
        """Cumulative Zipf probabilities over the ranks (float64, last entry 1)."""
        import numpy as np

        weights = 1.0 / np.arange(1, self.vocab_size + 1, dtype=np.float64) ** self.zipf_s
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    def sample_ranks(self, rng: Any, size: int, min_rank: int = 0) -> Any:
        """``size`` Zipf-distributed word ranks, conditioned on ``rank >= min_rank``."""
        import numpy as np

        low = self.cdf[min_rank - 1] if min_rank > 0 else 0.0
        u = low + (1.0 - low) * rng.random(size)
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), self.vocab_size - 1)

    def _block_rng(self, block: int) -> Any:
        import numpy as np

        return np.random.default_rng(np.random.SeedSequence([self.seed, block]))

    def block(self, block: int) -> list[tuple[str, str]]:
        """The ``(id, contents)`` pairs of block ``block`` (passages ``block*BLOCK`` onward)."""
        import numpy as np

        start = block * BLOCK
        keep = min(BLOCK, self.n - start)
        if keep <= 0:
            return []
        # always draw a whole block and keep its first ``keep`` passages: the draws, hence the
        # passages, must not depend on where the corpus ends
        count = BLOCK
        rng = self._block_rng(block)
        # articles of 1-6 passages (geometric, mean ~2.5); they never cross a block boundary
        sizes = np.minimum(rng.geometric(0.4, size=count), 6)
        ends = np.cumsum(sizes)
        sizes = sizes[: int(np.searchsorted(ends, count)) + 1]
        sizes[-1] -= int(sizes.sum()) - count
        article = np.repeat(np.arange(len(sizes)), sizes)
        last = np.zeros(count, dtype=bool)
        last[np.cumsum(sizes) - 1] = True
        lengths = np.where(
            last,
            rng.integers(10, 101, size=count),
            np.clip(np.rint(rng.normal(100, 4, size=count)), 90, 110).astype(np.int64),
        )
        ranks = self.sample_ranks(rng, int(lengths.sum()))
        words = self.vocab[ranks]
        # light punctuation, so tokenizers see what they see on real text
        punct = rng.random(len(words))
        words = np.where(punct < 0.05, words + ",", np.where(punct < 0.11, words + ".", words))
        title_len = rng.integers(1, 4, size=len(sizes))
        title_words = self.vocab[self.sample_ranks(rng, int(title_len.sum()), min_rank=len(_FUNCTION_WORDS))]
        title_ends = np.cumsum(title_len)
        titles = [
            " ".join(w.capitalize() for w in title_words[e - t : e])
            for t, e in zip(title_len.tolist(), title_ends.tolist(), strict=True)
        ]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        art = article.tolist()
        return [
            (str(start + i), f'"{titles[art[i]]}"\n' + " ".join(words[offsets[i] : offsets[i + 1]]))
            for i in range(keep)
        ]

    def records(self) -> Iterator[tuple[str, str]]:
        """All passages as ``(id, contents)``, one block in memory at a time."""
        for b in range((self.n + BLOCK - 1) // BLOCK):
            yield from self.block(b)


def write_corpus(corpus: SyntheticCorpus, path: str | os.PathLike[str]) -> Path:
    """Stream ``corpus`` to a FlashRAG jsonl file (written to ``path.tmp``, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for doc_id, contents in corpus.records():
            f.write(json.dumps({"id": doc_id, "contents": contents}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def synthetic_queries(corpus: SyntheticCorpus, n: int, seed: int = 1) -> list[str]:
    """``n`` question-like queries: a function-word lead plus 2-5 Zipfian content words (so most
    share terms with many passages, as real questions do)."""
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([corpus.seed, seed, 0x51]))
    leads = ("what is the", "who was the", "when did the", "where is the", "which")
    counts = rng.integers(2, 6, size=n)
    words = corpus.vocab[corpus.sample_ranks(rng, int(counts.sum()), min_rank=len(_FUNCTION_WORDS))]
    ends = np.cumsum(counts).tolist()
    lead = rng.integers(0, len(leads), size=n).tolist()
    return [
        f"{leads[lead[i]]} " + " ".join(words[e - c : e])
        for i, (c, e) in enumerate(zip(counts.tolist(), ends, strict=True))
    ]


def synthetic_vectors(
    n: int, dim: int = 384, *, seed: int = 0, clusters: int = 1024, noise: float = 0.6, start: int = 0
) -> Any:
    """Rows ``start..start+n`` of a deterministic stream of L2-normalised clustered Gaussian vectors.

    Stands in for sentence embeddings (``dim`` 384 = all-MiniLM-L6-v2): vectors are a random
    centre (one of ``clusters``) plus isotropic noise of total norm ``~noise``, normalised, so
    nearest neighbours are mostly in-cluster like topical passages. Generated per
    :data:`BLOCK`-row block seeded from ``(seed, block)``, so any slice is reproducible alone.
    """
    import numpy as np

    centres_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC3]))
    centres = centres_rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    first, last = start // BLOCK, (start + n - 1) // BLOCK if n else start // BLOCK - 1
    for b in range(first, last + 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E, b]))
        assign = rng.integers(0, clusters, size=BLOCK)
        block = centres[assign] + rng.standard_normal((BLOCK, dim), dtype=np.float32) * (noise / dim**0.5)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        lo, hi = max(start, b * BLOCK), min(start + n, (b + 1) * BLOCK)
        out[lo - start : hi - start] = block[lo - b * BLOCK : hi - b * BLOCK]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ssrl_trl.retrieval.synthetic", description="Write a synthetic FlashRAG corpus."
    )
    p.add_argument("--n", type=int, required=True, help="number of passages")
    p.add_argument("--out", type=Path, required=True, help="output .jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=300_000)
    p.add_argument("--zipf-s", type=float, default=1.1)
    args = p.parse_args(argv)
    corpus = SyntheticCorpus(args.n, seed=args.seed, vocab_size=args.vocab_size, zipf_s=args.zipf_s)
    write_corpus(corpus, args.out)
    print(f"wrote {args.n} passages to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
