"""What a method may need beyond the layer itself: the model, its tokenizer, calibration text.

Calibration text is WikiText-2 *valid*, never test (test is for perplexity only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

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

    def calibration_ids(self) -> torch.Tensor:
        """The first `calibration_tokens` token ids of WikiText-2 valid, as a 1-D tensor."""
        if "ids" not in self.cache:
            if self.tokenizer is None:
                raise TensoredgeError("this method needs calibration text, so a tokenizer: "
                                      "load the model with toolkit's load_model, which provides one")
            self.cache["ids"] = valid_ids(self.tokenizer)[: self.calibration_tokens]
        return self.cache["ids"]


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
