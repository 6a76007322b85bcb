"""Instruction prompts, written in our own words and built from the tag set.

A template is a plain ``str.format`` string with ``{question}`` and the tag names
(``{think_open}``, ``{search_open}``, ..., and ``{query_separator}``, which splits a parallel
search; ``{refine_open}``/``{refine_close}``, empty for a tag set without a refine step).
Users can replace it with a file named in the recipe; a template that does not mention
``{question}`` is rejected, since the model would never see the question.

A template file may hold several variants (for instance the same instruction with different
worked examples), separated by a line that is exactly ``VARIANT_SEPARATOR``. Each question then
gets one variant, chosen by a stable hash of its text: the same question sees the same prompt in
training and in evaluation. Meant for few-shot pools, so that no single worked example is one
string to copy; on the CPU Search-R1 recipe an 8-example pool did not stop the copying and did
worse than one example (docs/learning.md, "A pool of worked examples"), so that recipe keeps one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .protocol import TagSet

__all__ = [
    "TEMPLATES",
    "VARIANT_SEPARATOR",
    "build_messages",
    "load_template",
    "render_prompt",
    "template_variant",
    "template_variants",
]

VARIANT_SEPARATOR = "%%% variant %%%"

_SEARCH_R1 = """\
Answer the question below. Think step by step inside {think_open} and {think_close} whenever you \
need to reason. If you lack a fact, search for it by writing a short query between {search_open} \
and {search_close}; the search results will then appear between {info_open} and {info_close}. \
You may search as many times as you need. When you are sure, write only the final answer, a few \
words with no explanation, between {answer_open} and {answer_close}, for example \
{answer_open} Paris {answer_close}.
Question: {question}"""

_SSRL = """\
Answer the question below using only what you know. Think inside {think_open} and {think_close}. \
When you need a fact, write a search query between {search_open} and {search_close}, then write \
what you recall about that query yourself between {info_open} and {info_close}, as a search \
engine would return it. Repeat as needed. Finish with only the final answer, a few words with no \
explanation, between {answer_open} and {answer_close}.
Question: {question}"""

_R1_SEARCHER = """\
Solve the question below. Reason inside {think_open} and {think_close}. Whenever you need \
outside knowledge, write a query as {search_open} your query {search_close} inside your \
reasoning; the retrieved documents will be inserted between {info_open} and {info_close}. End \
with the final answer between {answer_open} and {answer_close}.
Question: {question}"""

_AUTOREFINE = """\
Answer the question below. Think inside {think_open} and {think_close}. If you lack a fact, search \
for it by writing a short query between {search_open} and {search_close}; the search results will \
then appear between {info_open} and {info_close}. After every set of results, first write between \
{refine_open} and {refine_close} the few facts from them that bear on the question, in your own \
short words; then think, search again or answer. When you are sure, write only the final answer, \
a few words with no explanation, between {answer_open} and {answer_close}.
Question: {question}"""

TEMPLATES: dict[str, str] = {
    "search_r1": _SEARCH_R1,
    "ssrl": _SSRL,
    "r1_searcher": _R1_SEARCHER,
    "autorefine": _AUTOREFINE,
}


def load_template(spec: str) -> str:
    """A built-in template name or a path to a text file."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt template {spec!r} is neither a built-in ({sorted(TEMPLATES)}) nor a file"
        )
    text = path.read_text(encoding="utf-8")
    for number, variant in enumerate(template_variants(text), start=1):
        if "{question}" not in variant:
            where = f"variant {number} of " if VARIANT_SEPARATOR in text else ""
            raise ValueError(f"prompt template {where}{spec} does not contain {{question}}")
    return text


def template_variants(template: str) -> list[str]:
    """The variants of a template: itself, or the parts between separator lines."""
    if VARIANT_SEPARATOR not in template:
        return [template]
    parts = [part.strip("\n") for part in template.split(f"\n{VARIANT_SEPARATOR}\n")]
    if any(VARIANT_SEPARATOR in part for part in parts) or not all(part.strip() for part in parts):
        raise ValueError(
            f"prompt template: {VARIANT_SEPARATOR!r} must stand on its own line between non-empty variants"
        )
    return parts


def template_variant(template: str, question: str) -> str:
    """The variant a question gets: a stable hash of its text (not Python's salted ``hash``)."""
    variants = template_variants(template)
    if len(variants) == 1:
        return variants[0]
    digest = hashlib.sha256(question.strip().encode("utf-8")).digest()
    return variants[int.from_bytes(digest[:8], "big") % len(variants)]


def render_prompt(template: str, question: str, tags: TagSet) -> str:
    think = tags.think or ("", "")
    refine = tags.refine or ("", "")
    fields = {
        "question": question.strip(),
        "think_open": think[0],
        "think_close": think[1],
        "search_open": tags.search[0],
        "search_close": tags.search[1],
        "info_open": tags.information[0],
        "info_close": tags.information[1],
        "answer_open": tags.answer[0],
        "answer_close": tags.answer[1],
        "refine_open": refine[0],
        "refine_close": refine[1],
        "query_separator": tags.query_separator,
    }
    try:
        return template_variant(template, question).format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"prompt template has an unknown or malformed field: {exc}; allowed: {sorted(fields)}"
        ) from exc


def build_messages(template: str, question: str, tags: TagSet, system: str | None = None) -> list[dict]:
    """Chat messages for one question: an optional system message and one user message."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": render_prompt(template, question, tags)})
    return messages
