"""Sweeps: many compressed variants of one model, scored against the dense one, written as JSON,
a Markdown table and a plot. One module per sweep target (e.g. `fc`)."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.files import atomic_path


def write_json_atomic(data: object, path: Path) -> None:
    """Write `data` as indented JSON under a temporary name, then rename (partial runs stay readable)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
