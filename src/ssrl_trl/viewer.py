"""Trajectory viewer: a rollout log (JSONL) -> one self-contained static HTML page.

    ssrl-trl view runs/ssrl_cpu/rollouts.jsonl -o rollouts.html --tokenizer models/smollm2-135m-instruct

Per step and per prompt group (rows of a step sharing a prompt), each trajectory shows its
tokens coloured by ``env_mask``: sampled tokens the loss trains on, masked sampled tokens (SSRL's
self-written information) and inserted tokens (retrieved observations); segment (turn)
boundaries; reward components; stop reason; and filters (correct / incorrect / invalid format /
truncated; also ``page.html#filter=truncated``).

The mask always comes from ``completion_ids`` and ``env_mask``, never from parsing tags. With
``--tokenizer`` every token is its own span (text by incremental detokenisation, so the pieces
add up to the decoded text). Without it, tokens are grouped by segment and mask value and a
segment's text is the one the rollout log stored; a segment whose tokens are only partly masked
is shown whole, marked as mixed, with a strip of per-token mask cells under it (pass
``--tokenizer`` to see which characters are masked). All text is escaped: model output is
untrusted. No server, no external assets.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections import OrderedDict
from html import escape
from pathlib import Path
from typing import Any

from .jsonl import BadLine, read_jsonl

__all__ = ["load_records", "main", "record_problem", "render"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 1.5em 3em;color:#1d232a;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.legend span,.badge{display:inline-block;padding:0 .45em;border-radius:3px;margin-right:.4em}
.filters{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd;z-index:2}
.filters button{margin-right:.3em}.filters button.on{background:#1d232a;color:#fff}
.group{border:1px solid #d5d9de;border-radius:6px;margin:.6em 0;padding:.4em .8em;background:#fff}
.prompt{white-space:pre-wrap;color:#555;max-height:6em;overflow:auto;font-size:12px}
.traj{border-top:1px dashed #ccc;padding:.4em 0}.traj.hidden,.group.hidden,.step.hidden{display:none}
.meta{font-size:12px;color:#333}.meta b{font-weight:600}
.text{white-space:pre-wrap;font:12.5px/1.5 ui-monospace,monospace;word-break:break-word}
.m1{background:#e3f0ff}.m0.self{background:#ffe2b8}.m0.inserted{background:#d8f5d0}
.seg{border-left:3px solid transparent}.seg+.seg{border-left-color:#8a6bbf;margin-left:1px}
.seg+.seg::before{content:attr(data-label);font:10px sans-serif;color:#fff;background:#8a6bbf;
 padding:0 3px;margin-right:2px;border-radius:2px}
.mixed{outline:1px dotted #c77}.strip{display:flex;flex-wrap:wrap;gap:1px;margin:2px 0}
.strip i{width:5px;height:8px;display:block}.strip i.c1{background:#8db8ef}.strip i.c0{background:#f0a040}
.ok{background:#c9f2c7}.bad{background:#f7c9c9}.warn{background:#fbe7a6}.dim{color:#888}
"""

_JS = """
function applyFilter(name){
  document.querySelectorAll('.filters button').forEach(b=>b.classList.toggle('on',b.dataset.f===name));
  document.querySelectorAll('.traj').forEach(t=>{
    const d=t.dataset, show= name==='all' || (name==='correct'&&d.correct==='1') ||
      (name==='incorrect'&&d.correct==='0') || (name==='invalid'&&d.invalid==='1') ||
      (name==='truncated'&&d.truncated==='1') || (name==='masked'&&d.masked!=='0');
    t.classList.toggle('hidden',!show);});
  document.querySelectorAll('.group,.step').forEach(g=>
    g.classList.toggle('hidden',!g.querySelector('.traj:not(.hidden)')));
  const n=document.querySelectorAll('.traj:not(.hidden)').length;
  document.getElementById('shown').textContent=n;
}
document.querySelectorAll('.filters button').forEach(b=>b.addEventListener('click',()=>{
  applyFilter(b.dataset.f); history.replaceState(null,'','#filter='+b.dataset.f);}));
const m=location.hash.match(/filter=(\\w+)/); applyFilter(m?m[1]:'all');
"""

_FILTERS = (
    ("all", "all"),
    ("correct", "correct"),
    ("incorrect", "incorrect"),
    ("invalid", "invalid format"),
    ("truncated", "truncated"),
    ("masked", "has masked tokens"),
)


def load_records(path: str | Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """The rollout log's drawable records in file order, and the lines skipped with the reason.

    A log being written (or cut off by a kill) ends in a torn line, and one bad record should
    not hide thousands of good ones: lines that are not JSON objects and records whose fields
    cannot be drawn are skipped and listed; only an unreadable file is an error.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    content = read_jsonl(path, strict=False)
    records, skipped = [], list(content.bad)
    if content.torn_line is not None:
        skipped.append(BadLine(content.torn_line, "torn last line (an unfinished write)"))
    for number, rec in zip(content.line_numbers, content.records, strict=True):
        problem = record_problem(rec)
        if problem is None:
            records.append(rec)
        else:
            skipped.append(BadLine(number, problem))
    return records, sorted(skipped, key=lambda b: b.line)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def record_problem(rec: dict[str, Any]) -> str | None:
    """Why a rollout-log record cannot be drawn (wrong field types), or ``None``."""
    if not isinstance(rec.get("step"), int | float | str | type(None)):
        return f"step is a {type(rec['step']).__name__}, not a number"
    ids, mask = rec.get("completion_ids", []), rec.get("env_mask", [])
    if ids is not None and not _int_list(ids):
        return "completion_ids is not a list of integers"
    if mask is not None and not (_int_list(mask) and set(mask) <= {0, 1}):
        return "env_mask is not a list of 0/1"
    rewards = rec.get("rewards", {})
    if rewards is not None and not (
        isinstance(rewards, dict) and all(isinstance(v, int | float | type(None)) for v in rewards.values())
    ):
        return "rewards is not a mapping of names to numbers"
    segments = rec.get("segments", [])
    if segments is None:
        return None
    if not isinstance(segments, list):
        return "segments is not a list"
    n = len(ids or [])
    for k, seg in enumerate(segments):
        if not isinstance(seg, dict) or not _int_list([seg.get("start"), seg.get("end")]):
            return f"segment {k} has no integer start/end"
        if not 0 <= seg["start"] <= seg["end"] <= n:
            return f"segment {k} [{seg['start']}, {seg['end']}) lies outside the {n} tokens"
        if not isinstance(seg.get("text"), str | type(None)):
            return f"segment {k} text is not a string"
    return None


def _runs(mask: list[int], start: int, end: int) -> list[tuple[int, int, int]]:
    """Consecutive runs ``(start, end, mask value)`` of ``mask[start:end]``."""
    runs: list[tuple[int, int, int]] = []
    for i in range(start, end):
        if runs and runs[-1][2] == mask[i]:
            runs[-1] = (runs[-1][0], i + 1, mask[i])
        else:
            runs.append((i, i + 1, mask[i]))
    return runs


def _segments(rec: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(rec.get("completion_ids") or [])
    segs = rec.get("segments") or []
    if not segs:
        return [{"kind": "model", "start": 0, "end": n, "text": None}]
    return segs


def _token_class(mask: int, kind: str) -> str:
    return "m1" if mask else ("m0 self" if kind == "model" else "m0 inserted")


def _render_tokens(rec: dict[str, Any], pieces: list[str] | None) -> str:
    ids, mask = rec.get("completion_ids") or [], rec.get("env_mask") or []
    if len(mask) != len(ids):
        return f'<p class="bad">env_mask has {len(mask)} entries for {len(ids)} tokens; not drawn</p>'
    out = []
    for k, seg in enumerate(_segments(rec)):
        kind, start, end = str(seg.get("kind", "model")), int(seg["start"]), int(seg["end"])
        label = escape(f"{k + 1}: {kind}")
        title = escape(f"segment {k + 1}: {kind}, tokens [{start}, {end})")
        body = []
        runs = _runs(mask, start, end)
        if pieces is not None:
            for i in range(start, end):
                body.append(
                    f'<span class="t {_token_class(mask[i], kind)}" data-mask="{mask[i]}" '
                    f'title="#{i} id {int(ids[i])}">{escape(pieces[i])}</span>'
                )
        elif len(runs) <= 1:
            value = runs[0][2] if runs else 1
            text = seg.get("text")
            text = escape(text) if text is not None else escape(" ".join(map(str, ids[start:end])))
            body.append(
                f'<span class="run {_token_class(value, kind)}" data-mask="{value}" '
                f'data-tokens="{end - start}">{text}</span>'
            )
        else:  # partly masked segment: the stored text cannot be split without a tokenizer
            zeros = sum(1 for i in range(start, end) if not mask[i])
            cells = "".join(
                f'<i class="c{mask[i]}" title="#{i} mask {mask[i]}"></i>' for i in range(start, end)
            )
            spans = ", ".join(f"[{a},{b})" for a, b, v in runs if not v)
            body.append(
                f'<span class="run mixed" data-mask="mixed" data-tokens="{end - start}" data-masked="{zeros}" '
                f'title="{zeros} of {end - start} tokens masked: {escape(spans)}">'
                f"{escape(seg.get('text') or '')}</span>"
                f'<span class="strip">{cells}</span>'
            )
        out.append(
            f'<span class="seg" data-kind="{escape(kind)}" data-label="{label}" title="{title}">'
            + "".join(body)
            + "</span>"
        )
    return "".join(out)


def _flags(rec: dict[str, Any], correct_reward: str | None, threshold: float) -> dict[str, str]:
    rewards = rec.get("rewards") or {}
    name = correct_reward or next(iter(rewards), None)
    value = rewards.get(name) if name else None
    correct = "?" if value is None else ("1" if value >= threshold else "0")
    fmt = rewards.get("format")
    invalid = rec.get("answer") is None or bool(rec.get("invalid_actions")) or (fmt is not None and fmt < 1.0)
    return {
        "correct": correct,
        "invalid": "1" if invalid else "0",
        "truncated": "1" if rec.get("truncated") else "0",
    }


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))


def _render_traj(rec, index, pieces, correct_reward, threshold) -> str:
    ids, mask = rec.get("completion_ids") or [], rec.get("env_mask") or []
    masked = sum(1 for v in mask if not v)
    flags = _flags(rec, correct_reward, threshold)
    rewards = " ".join(
        f"<b>{escape(str(k))}</b>={escape(_fmt(v))}" for k, v in (rec.get("rewards") or {}).items()
    )
    badges = []
    if flags["correct"] != "?":
        badges.append(
            f'<span class="badge {"ok" if flags["correct"] == "1" else "bad"}">'
            f"{'correct' if flags['correct'] == '1' else 'incorrect'}</span>"
        )
    if flags["invalid"] == "1":
        badges.append('<span class="badge warn">invalid format</span>')
    if flags["truncated"] == "1":
        badges.append('<span class="badge warn">truncated</span>')
    meta = (
        f"#{index + 1} {''.join(badges)} rewards: {rewards or '<span class=dim>none</span>'} · "
        f"stop: <b>{escape(_fmt(rec.get('stop_reason')))}</b> · turns {escape(_fmt(rec.get('turns')))} · "
        f"searches {escape(_fmt(rec.get('num_searches')))} · invalid actions "
        f"{escape(_fmt(rec.get('invalid_actions')))} · tokens {len(ids)}, masked "
        f'<b class="masked-count">{masked}</b> · answer: <b>{escape(_fmt(rec.get("answer")))}</b>'
    )
    return (
        f'<div class="traj" data-correct="{flags["correct"]}" data-invalid="{flags["invalid"]}" '
        f'data-truncated="{flags["truncated"]}" data-masked="{masked}" data-tokens="{len(ids)}" '
        f'data-rollout-id="{escape(str(rec.get("rollout_id", "")))}">'
        f'<div class="meta">{meta}</div><div class="text">{_render_tokens(rec, pieces)}</div></div>'
    )


def render(
    records: list[dict[str, Any]],
    *,
    tokenizer: Any = None,
    title: str = "rollouts",
    correct_reward: str | None = None,
    correct_threshold: float = 0.5,
    skipped: list[BadLine] | None = None,
) -> str:
    """The HTML page for ``records`` (rollout-log dicts). ``tokenizer`` (anything with
    ``decode``) gives per-token spans; ``correct_reward`` names the reward that decides
    correct/incorrect (default: each record's first reward, the recipe's outcome reward);
    ``skipped`` lines of the log are listed at the top."""
    from .detok import token_texts

    steps: OrderedDict[Any, OrderedDict[str, list]] = OrderedDict()
    for rec in records:
        prompt = rec.get("prompt")
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
        steps.setdefault(rec.get("step"), OrderedDict()).setdefault(key, []).append(rec)
    total_masked = sum(sum(1 for v in r.get("env_mask") or [] if not v) for r in records)
    parts = []
    for step, groups in steps.items():
        parts.append(
            f'<section class="step" data-step="{escape(str(step))}"><h2>step {escape(str(step))}</h2>'
        )
        for g, (prompt, rows) in enumerate(groups.items()):
            values = [_first_reward(r, correct_reward) for r in rows]
            values = [v for v in values if v is not None]
            same = len(values) > 1 and max(values) == min(values)
            mean = sum(values) / len(values) if values else None
            parts.append(
                f'<div class="group" data-size="{len(rows)}"><div class="meta">group {g + 1} · '
                f"{len(rows)} trajectories · mean outcome reward {escape(_fmt(mean))}"
                + (' <span class="badge warn">zero reward variance</span>' if same else "")
                + f'</div><div class="prompt">{escape(prompt)}</div>'
            )
            for i, rec in enumerate(rows):
                ids = rec.get("completion_ids") or []
                pieces = token_texts(tokenizer, list(ids)).pieces if tokenizer is not None else None
                parts.append(_render_traj(rec, i, pieces, correct_reward, correct_threshold))
            parts.append("</div>")
        parts.append("</section>")
    buttons = "".join(f'<button data-f="{f}">{escape(label)}</button>' for f, label in _FILTERS)
    mode = "one span per token (tokenizer)" if tokenizer is not None else "token runs by segment and mask"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="summary">{len(steps)} steps · <span id="n-groups">{sum(len(g) for g in steps.values())}</span> '
        f'groups · <span id="n-traj">{len(records)}</span> trajectories (<span id="shown">{len(records)}</span> '
        f'shown) · <span id="n-masked">{total_masked}</span> masked tokens · {escape(mode)}</p>'
        '<p class="legend"><span class="m1">sampled (trained)</span><span class="m0 self">masked: '
        'self-written information</span><span class="m0 inserted">masked: inserted by the environment</span>'
        '<span class="badge" style="background:#8a6bbf;color:#fff">n: kind</span> segment / turn boundary</p>'
        f"{_skipped_html(skipped or [])}"
        f'<div class="filters">{buttons}</div>' + "".join(parts) + f"<script>{_JS}</script></body></html>\n"
    )


def _skipped_html(skipped: list[BadLine]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>line {b.line}: {escape(b.reason)}</li>" for b in skipped)
    return (
        f'<details class="skipped warn" open><summary>{len(skipped)} line(s) of the log skipped</summary>'
        f"<ul>{items}</ul></details>"
    )


def _first_reward(rec: dict[str, Any], name: str | None) -> float | None:
    rewards = rec.get("rewards") or {}
    key = name or next(iter(rewards), None)
    value = rewards.get(key) if key else None
    return float(value) if isinstance(value, int | float) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ssrl-trl view", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log", help="rollout log (rollouts.jsonl)")
    parser.add_argument("-o", "--output", help="HTML file to write (default: the log's name with .html)")
    parser.add_argument("--tokenizer", help="tokenizer folder or name: one span per token")
    parser.add_argument("--correct-reward", help="reward deciding correct/incorrect (default: the first one)")
    parser.add_argument("--correct-threshold", type=float, default=0.5, help="correct when reward >= this")
    parser.add_argument("--steps", type=int, nargs="*", help="only these steps")
    args = parser.parse_args(argv)
    try:
        records, skipped = load_records(args.log)
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for bad in skipped[:20]:
        print(f"skipped {args.log}:{bad.line}: {bad.reason}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"skipped {len(skipped) - 20} more lines (listed in the page)", file=sys.stderr)
    if args.steps:
        records = [r for r in records if r.get("step") in set(args.steps)]
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    out = Path(args.output) if args.output else Path(args.log).with_suffix(".html")
    html = render(
        records,
        tokenizer=tokenizer,
        title=f"ssrl-trl rollouts: {Path(args.log).name}",
        correct_reward=args.correct_reward,
        correct_threshold=args.correct_threshold,
        skipped=skipped,
    )
    out.write_text(html, encoding="utf-8")
    print(f"wrote {out} ({len(records)} trajectories, {len(skipped)} lines skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
