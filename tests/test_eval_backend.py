"""Which generator ``ssrl-trl eval`` uses: vLLM when installed (or a server is named), else HF."""

from __future__ import annotations

import importlib.util

import pytest

from ssrl_trl.evaluation.cli import backend_kind, build_parser, main


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_auto_picks_what_is_installed():
    expected = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    assert backend_kind(_args()) == expected
    assert backend_kind(_args("--vllm-url", "http://127.0.0.1:8000")) == "vllm"
    assert backend_kind(_args("--gguf-file", "m.gguf")) == "hf"  # vLLM cannot load our GGUF path
    assert backend_kind(_args("--backend", "hf")) == "hf"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "hf", "--vllm-url", "http://127.0.0.1:8000"], "--vllm-url needs --backend vllm"),
        (["--backend", "vllm", "--gguf-file", "m.gguf"], "cannot load --gguf-file"),
    ],
)
def test_contradictory_backend_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["--datasets", "x.jsonl", *argv])
    assert message in capsys.readouterr().err
