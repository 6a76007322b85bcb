"""Per-token text pieces of generated ids, for finding tag boundaries on tokens.

The trajectory is built from token ids; text is only used to *locate* tags (stop strings,
self-written information blocks). This module gives each token the characters it contributes,
by incremental detokenisation (the prefix/read-offset scheme streaming servers use), so a tag
found at character ``c`` maps back to exactly one token index. Nothing is ever re-tokenised.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["TokenTexts", "token_texts"]


class _Decoder(Protocol):
    def decode(self, ids: list[int], **kwargs) -> str: ...


class TokenTexts:
    """Pieces of text per token: ``text == "".join(pieces)``, ``offsets[i] = (start, end)``.

    A token that completes a multi-byte character shares it with the tokens before it: the
    character is credited to the token that completes it, so earlier pieces can be empty.
    """

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.offsets: list[tuple[int, int]] = []
        pos = 0
        for piece in pieces:
            self.offsets.append((pos, pos + len(piece)))
            pos += len(piece)
        self.text = "".join(pieces)

    def token_at_char(self, char_end: int) -> int:
        """Index of the first token whose text reaches character ``char_end`` (exclusive end),
        i.e. the token that completes ``text[:char_end]``; -1 if none does."""
        lo, hi = 0, len(self.offsets)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.offsets[mid][1] >= char_end:
                hi = mid
            else:
                lo = mid + 1
        return lo if lo < len(self.offsets) else -1


def token_texts(tokenizer: _Decoder, ids: list[int]) -> TokenTexts:
    """Per-token pieces whose concatenation equals ``tokenizer.decode(ids)``.

    Special tokens are kept (skip_special_tokens=False) so that the positions line up with ids.
    If the incremental result ever disagrees with a full decode (an exotic tokenizer), fall back
    to exact prefix decodes, which is quadratic but always right.
    """
    pieces: list[str] = []
    prefix_offset = read_offset = 0
    for i in range(len(ids)):
        prefix_text = tokenizer.decode(ids[prefix_offset:read_offset], skip_special_tokens=False)
        window = tokenizer.decode(ids[prefix_offset : i + 1], skip_special_tokens=False)
        if not window.startswith(prefix_text):
            return _exact(tokenizer, ids)
        if len(window) == len(prefix_text) or window.endswith("\ufffd"):
            pieces.append(
                ""
            )  # nothing new yet, or an incomplete UTF-8 sequence: the completing token gets it
            continue
        pieces.append(window[len(prefix_text) :])
        prefix_offset, read_offset = read_offset, i + 1
    result = TokenTexts(pieces)
    if result.text != tokenizer.decode(ids, skip_special_tokens=False):
        return _exact(tokenizer, ids)
    return result


def _exact(tokenizer: _Decoder, ids: list[int]) -> TokenTexts:
    pieces, previous = [], ""
    for i in range(len(ids)):
        current = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        if current.startswith(previous) and not current.endswith("\ufffd"):
            pieces.append(current[len(previous) :])
            previous = current
        else:
            pieces.append("")
    full, joined = tokenizer.decode(ids, skip_special_tokens=False), "".join(pieces)
    if pieces and full != joined and full.startswith(joined):
        pieces[-1] += full[len(joined) :]  # a trailing incomplete character still has text
    return TokenTexts(pieces)
