"""``ssrl-trl eval`` through vLLM: pass@k samples come from the same engine backend as training."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import MODEL, ROOT

DATA = ROOT.parent / "shared" / "data" / "qa" / "mini_eval.jsonl"


def test_passk_eval_runs_on_vllm(tmp_path):
    out = tmp_path / "passk"
    cmd = [
        sys.executable, "-m", "ssrl_trl.cli", "eval", "--backend", "vllm", "--model", str(MODEL),
        "--datasets", str(DATA), "--limit", "1", "--mode", "self", "--n", "32", "--temperature", "1.0",
        "--max-new-tokens", "48", "--batch-size", "160", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "predictions_self.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["n"] == 32 and len(r["answers"]) == 32 for r in records)
    for r in records:
        assert 0 < r["tokens"] <= 48 and sum(r["stop_reasons"].values()) == 32
    curves = json.loads((out / "curves.json").read_text())
    assert "passk" in curves and (out / "passk_self.md").exists()
    meta = json.loads((out / "summary.json").read_text())["meta"]
    assert meta["backend"] == "VLLMBackend"  # the engine, not transformers, generated
