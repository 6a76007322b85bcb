"""The arms of an ``ssrl-trl eval`` run built from flags, and the ``--retriever`` spec.

Modes and their arms (each arm writes ``predictions_<arm>.jsonl``; a rerun resumes):

* ``self`` — ``self``: SSRL self-search, single pass, the model writes its own information;
* ``retrieval`` — ``real``: Search-R1 loop with the retriever (Search-R1 prompt and tags);
* ``sim2real`` — ``self`` and ``real``: the self-search prompt both times, the second with the
  information blocks supplied by the retriever (generation stops at the closing search tag);
* ``hybrid`` — the two Sim2Real arms (plus ``self_samples`` for the disagreement signal), then a
  threshold sweep routing uncertain questions to real search.

``format_valid`` is scored with the tag set's own grammar unless ``--format-check`` names one.
With ``--recipe`` the arm comes from the recipe instead (:mod:`.recipe_eval`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..budgets import Budgets
from ..rollout.backends import SamplingConfig

__all__ = ["build_arms", "parse_retriever", "retriever_section"]


def retriever_section(spec: str, corpus: str | None = None) -> dict[str, Any]:
    """``bm25:INDEX`` / ``dense:INDEX`` / ``index:INDEX`` / ``http:URL`` (or a bare http(s) URL) /
    ``web:PROVIDER[?option=value&...]`` as a recipe's ``environment.retriever`` mapping."""
    kind, sep, rest = spec.partition(":")
    if kind in ("http", "https") and rest.startswith("//"):
        return {"kind": "http", "url": spec}
    if not sep or not rest:
        raise ValueError("expected KIND:TARGET, e.g. bm25:indexes/mini_wiki_bm25 or http://127.0.0.1:8000")
    if kind == "http":
        return {"kind": "http", "url": rest}
    if kind == "web":  # web:PROVIDER[?option=value&...], e.g. web:serpapi?cache=runs/eval/web.sqlite
        from ..retrieval.web import web_section

        return web_section(rest)
    return {"kind": kind, "index": rest, "corpus": corpus}


def parse_retriever(spec: str, corpus: str | None = None):
    """The retriever of a ``--retriever`` spec, building a missing BM25 index from ``corpus``.

    Anything wrong with the spec, the index or the corpus is a :class:`~ssrl_trl.errors.UserError`
    naming ``--retriever`` (the CLI prints it as one ``error:`` line)."""
    from ..errors import UserError
    from ..retrieval.factory import RetrieverSpec

    try:
        return RetrieverSpec.from_values(retriever_section(spec, corpus)).build()
    except (ValueError, OSError) as exc:
        raise UserError(f"--retriever {spec}: {exc}") from None


def build_arms(a: argparse.Namespace, tokenizer: Any, retriever: Any = None) -> list:
    """The arms of ``a.mode`` (see the module docstring)."""
    from ..environments import RetrievalEnv, SelfSearchEnv
    from ..prompts import load_template
    from ..protocol import get_tag_set
    from .runner import Arm

    real_mode = a.mode == "retrieval"
    tags = get_tag_set(a.tags or ("search_r1" if real_mode else "ssrl"))
    common = {
        "template": load_template(a.prompt_template or ("search_r1" if real_mode else "ssrl")),
        "system": a.system,
        "response_prefix": a.response_prefix,
        "format_check": None if a.format_check == "auto" else a.format_check,
    }
    sampling = SamplingConfig(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k)
    single, multi = _budgets(a)
    arms = []
    if a.mode != "retrieval":
        arms.append(
            Arm("self", SelfSearchEnv(tags), budgets=single, sampling=sampling, signals=True, n=a.n, **common)
        )
    if a.mode != "self":
        env = RetrievalEnv(retriever, tokenizer, tags, topk=a.topk)
        describe = {"retriever": a.retriever, "topk": a.topk}
        arms.append(Arm("real", env, budgets=multi, sampling=sampling, describe=describe, n=a.n, **common))
    if a.mode == "hybrid" and a.hybrid_samples > 1:
        hot = SamplingConfig(temperature=a.temperature or 1.0, top_p=a.top_p, top_k=a.top_k)
        arms.append(
            Arm(
                "self_samples",
                SelfSearchEnv(tags),
                budgets=single,
                sampling=hot,
                n=a.hybrid_samples,
                **common,
            )
        )
    return arms


def _budgets(a: argparse.Namespace) -> tuple[Budgets, Budgets]:
    """Self-search: one turn of ``--max-new-tokens``; real search: the multi-turn flags."""
    single = Budgets(
        max_turns=1, max_tokens_per_turn=a.max_new_tokens, max_completion_tokens=a.max_new_tokens
    )
    multi = Budgets(
        max_turns=a.max_turns,
        max_tokens_per_turn=min(a.max_tokens_per_turn, a.max_new_tokens),
        max_obs_tokens=a.max_obs_tokens,
        max_completion_tokens=a.max_new_tokens,
        answer_reserve_tokens=a.answer_reserve_tokens,
    )
    return single, multi
