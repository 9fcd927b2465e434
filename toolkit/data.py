"""The evaluation and calibration text shipped with the toolkit (WikiText-2, CC BY-SA 3.0)."""

from __future__ import annotations

from importlib import resources

SPLITS = ("test", "valid")


def wikitext2(split: str = "test") -> str:
    """WikiText-2 `split` as one string (test for perplexity, valid for calibration only)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return (resources.files("toolkit") / "data" / "wikitext-2" / f"{split}.txt").read_text("utf-8")


def wikitext2_ids(tokenizer, split: str = "test") -> list[int]:
    """Token ids of WikiText-2 `split`."""
    return tokenizer(wikitext2(split), add_special_tokens=False, verbose=False)["input_ids"]
