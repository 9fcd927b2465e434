"""Paths of the files shipped in models/assets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def gpt2_dir() -> Path:
    """Directory with the GPT-2 tokenizer files and GPT-2 small's config."""
    return Path(str(resources.files("models") / "assets" / "gpt2"))


def gpt2_tokenizer():
    """The real GPT-2 byte-level BPE tokenizer, from the shipped files."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(gpt2_dir())


def sensitivity_profile(name: str) -> Path:
    """A measured sensitivity profile shipped for a registered model (toolkit.compress.profile_file)."""
    return Path(str(resources.files("models") / "assets" / "profiles" / name))
