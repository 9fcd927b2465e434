"""Tokenizer files as tensoredge writes them: never with a truncation or padding setting.

A tokenizer.json that carries `truncation` cuts every encoded text silently (the GPT-2 files
once shipped here cut at 50 tokens), so what we save is cleared of both; device_bench.generate
clears them from what it reads.

Only the fast tokenizer's files are written (`legacy_format=False`). A tokenizer read from a GGUF
names the GGUF as its vocabulary file, so with sentencepiece installed the legacy format copied the
whole GGUF (98 MB for the default model) into every folder as tokenizer.model.
"""

from __future__ import annotations

import json
from pathlib import Path


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """`tokenizer.save_pretrained(folder)` (fast files only), then tokenizer.json without truncation or padding."""
    tokenizer.save_pretrained(folder, legacy_format=False)
    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        spec = json.loads(path.read_text())
        if spec.get("truncation") is not None or spec.get("padding") is not None:
            spec["truncation"] = spec["padding"] = None
            path.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n")

