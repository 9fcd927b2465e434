"""What a method may need beyond the layer itself: the model, its tokenizer, calibration text.

Calibration text is WikiText-2 *valid* by default, or a mix of the distillation texts (`valid`,
`books`) in equal shares; never a held-out text (those are for perplexity only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from toolkit.data import text_ids
from toolkit.errors import TensoredgeError


@dataclass
class Context:
    """Passed to every method's `compress`; calibration ids are tokenized once, on first use."""

    model: nn.Module
    family: str
    tokenizer: object | None = None
    calibration_tokens: int = 16384
    device: str = "cpu"  # where the calibration pass runs (factorizations stay on the CPU)
    cache: dict = field(default_factory=dict)  # methods share expensive results here (e.g. activations)
    calibration: tuple[str, ...] = ("valid",)  # distillation texts, in equal shares (check_calibration)

    def calibration_ids(self) -> torch.Tensor:
        """`calibration_tokens` token ids, 1-D: the first tokens of each calibration text, in equal shares."""
        if "ids" not in self.cache:
            if self.tokenizer is None:
                raise TensoredgeError("this method needs calibration text, so a tokenizer: "
                                      "load the model with toolkit's load_model, which provides one")
            share = self.calibration_tokens // len(self.calibration)
            parts = [valid_ids(self.tokenizer)[:share] if name == "valid" else
                     torch.tensor(text_ids(self.tokenizer, name)[:share], dtype=torch.long)
                     for name in self.calibration]
            self.cache["ids"] = torch.cat(parts)[: self.calibration_tokens]
        return self.cache["ids"]


def check_calibration(names: str | tuple[str, ...]) -> tuple[str, ...]:
    """`valid`, `books` or `valid,books` (also `valid+books`) -> names; a held-out text is refused."""
    from toolkit.data import check_train_texts

    parts = names.replace("+", ",").split(",") if isinstance(names, str) else names
    return check_train_texts(tuple(n.strip() for n in parts), "--calibration")


_VALID: list[tuple[object, torch.Tensor]] = []  # (tokenizer, its WikiText-2 valid ids): tokenized once


def valid_ids(tokenizer) -> torch.Tensor:
    """All WikiText-2 valid token ids for `tokenizer` (tokenizing the split costs seconds)."""
    for known, ids in _VALID:
        if known is tokenizer:
            return ids
    from toolkit.data import wikitext2_ids

    ids = torch.tensor(wikitext2_ids(tokenizer, "valid"), dtype=torch.long)
    _VALID[:] = [(tokenizer, ids)]
    return ids
