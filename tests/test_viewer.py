"""The trajectory viewer on a real rollout log, checked in headless Chromium's DOM.

Needs Chromium (Debian: ``apt-get install -y chromium``); the test fails, not skips, without it.
"""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import write_tiny_recipe
from ssrl_trl.rollout.trl_adapter import SearchRollout
from ssrl_trl.trajectory import Trajectory
from ssrl_trl.viewer import main as view

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="alert(1)">'


def dump_dom(page: Path, profile: Path, fragment: str = "") -> str:
    """The DOM after the page's script ran, from headless Chromium."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--dump-dom",
        page.as_uri() + fragment,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """Trajectory cards with their token spans (mask, text), and every element seen."""

    VOID = {"meta", "img", "br", "hr", "input", "link"}

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.trajs: list[dict] = []
        self.ids: dict[str, str] = {}
        self._stack: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag in self.VOID:
            return
        self._stack.append((tag, a))
        cls = a.get("class", "").split()
        if tag == "div" and "traj" in cls:
            self.trajs.append({**a, "tokens": []})
        elif tag == "span" and ("t" in cls or "run" in cls):
            self.trajs[-1]["tokens"].append({**a, "text": ""})

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if not self._stack:
            return
        tag, a = self._stack[-1]
        cls = a.get("class", "").split()
        if tag == "span" and ("t" in cls or "run" in cls):
            self.trajs[-1]["tokens"][-1]["text"] += data
        if "id" in a:
            self.ids[a["id"]] = self.ids.get(a["id"], "") + data

    def visible(self) -> list[dict]:
        return [t for t in self.trajs if "hidden" not in t["class"].split()]


def synthetic_record(tokenizer) -> dict:
    """A trajectory with both kinds of mask, recorded by the rollout's own ``_record``:
    a model turn whose self-written information is masked, then an inserted observation."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    traj = Trajectory(prompt_ids=enc("Q"))
    head = enc("<think>need a fact</think><search>capital of France</search>")
    info = enc("<information>Paris is the capital.</information>")
    traj.append(head + info, "model", [0.0] * (len(head) + len(info)))
    traj.mask_range(len(head), len(head) + len(info))  # SSRL: self-written information is masked
    traj.append(enc("<information>Doc 1: Paris " + HOSTILE + "</information>"), "observation")
    traj.append(enc("<answer>Paris</answer>"), "model", [0.0] * len(enc("<answer>Paris</answer>")))
    traj.turns, traj.num_searches, traj.stop_reason, traj.answer = 2, 1, "max_turns", "Paris"
    record = SearchRollout._record(traj, tokenizer, "Which city? " + HOSTILE, step=99)
    return {"rollout_id": "synthetic", **record, "rewards": {"ssrl": 1.0, "tag_presence": 0.5}}


@pytest.fixture(scope="module")
def rollout_log(tmp_path_factory, tiny_model_dir, shared_data, tokenizer) -> Path:
    """The rollout log of a real 2-step CPU run, plus one synthetic two-mask trajectory."""
    from ssrl_trl.train import main

    tmp = tmp_path_factory.mktemp("viewer_run")
    recipe = write_tiny_recipe(tmp, tiny_model_dir, shared_data, steps=2, health={"cost": False})
    assert main(["--config", str(recipe)]) == 0
    log = tmp / "run" / "rollouts.jsonl"
    with log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(synthetic_record(tokenizer)) + "\n")
    return log


def as_parsed(text: str) -> str:
    """What an HTML parser makes of text: newlines normalised, NUL replaced."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_viewer_draws_every_token_with_its_mask_in_chromium(rollout_log, tiny_model_dir, tokenizer, tmp_path):
    page = tmp_path / "view.html"
    assert view([str(rollout_log), "-o", str(page), "--tokenizer", str(tiny_model_dir)]) == 0
    recs = records(rollout_log)
    dom = Dom(dump_dom(page, tmp_path / "profile"))
    assert len(dom.trajs) == len(recs) == 9 and dom.ids["n-traj"] == "9" and dom.ids["shown"] == "9"
    assert sum(1 for tag, a in dom.elements if tag == "section" and "step" in a.get("class", "")) == 3
    groups = {(r["step"], r["prompt"]) for r in recs}
    assert sum(1 for tag, a in dom.elements if tag == "div" and a.get("class") == "group") == len(groups)
    assert dom.ids["n-masked"] == str(sum(r["env_mask"].count(0) for r in recs))
    for rec, card in zip(recs, dom.trajs, strict=True):
        assert [int(t["data-mask"]) for t in card["tokens"]] == rec["env_mask"]
        text = tokenizer.decode(rec["completion_ids"], skip_special_tokens=False)
        assert "".join(t["text"] for t in card["tokens"]) == as_parsed(text)
        assert card["data-masked"] == str(rec["env_mask"].count(0))
    synthetic = dom.trajs[-1]
    self_written = "".join(t["text"] for t in synthetic["tokens"] if "self" in t["class"].split())
    inserted = "".join(t["text"] for t in synthetic["tokens"] if "inserted" in t["class"].split())
    assert self_written == "<information>Paris is the capital.</information>"
    assert inserted == "<information>Doc 1: Paris " + HOSTILE + "</information>"
    # untrusted text stays text: no element came from it, and ours is the only script
    assert not any(tag == "img" for tag, _ in dom.elements)
    assert [tag for tag, _ in dom.elements].count("script") == 1


@pytest.mark.slow
def test_viewer_filters_and_the_tokenizer_free_mode(rollout_log, tmp_path):
    recs = records(rollout_log)
    page = tmp_path / "runs.html"
    assert view([str(rollout_log), "-o", str(page)]) == 0
    dom = Dom(dump_dom(page, tmp_path / "profile", "#filter=masked"))
    assert [t["data-rollout-id"] for t in dom.visible()] == [
        r["rollout_id"] for r in recs if 0 in r["env_mask"]
    ]
    card = next(t for t in dom.trajs if t["data-rollout-id"] == "synthetic")
    masked = sum(
        int(t["data-tokens"]) if t["data-mask"] == "0" else int(t.get("data-masked", 0))
        for t in card["tokens"]
    )
    assert masked == recs[-1]["env_mask"].count(0)
    kinds = [t["class"] for t in card["tokens"]]
    assert kinds == ["run mixed", "run m0 inserted", "run m1"]  # segments, by mask value
    truncated = Dom(dump_dom(page, tmp_path / "profile2", "#filter=truncated")).visible()
    assert [t["data-rollout-id"] for t in truncated] == [r["rollout_id"] for r in recs if r["truncated"]]
    correct = Dom(dump_dom(page, tmp_path / "profile3", "#filter=correct")).visible()
    assert [t["data-rollout-id"] for t in correct] == ["synthetic"]  # first reward >= 0.5
