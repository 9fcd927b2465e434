"""Distillation text: named sources mixed by weight, and the batch every step draws from them.

`--data valid:0.5,generated=DIR:0.5,books:0.2` mixes WikiText-2 valid, the teacher's own samples
cached in DIR (toolkit.heal.samples) and the shipped public-domain books; weights are relative
(default 1). Each row of a step's batch picks its source by weight and a window inside it, from a
generator seeded by (seed, step) alone, so step k draws the same batch in any run: a resumed run
sees exactly the batches an uninterrupted one does. Evaluation texts are never sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.data import EVAL_TEXTS, TRAIN_TEXTS, text_ids
from toolkit.errors import TensoredgeError

DEFAULT = "valid"
SOURCES = (*TRAIN_TEXTS, "generated")


@dataclass
class Source:
    """One source: a token stream (1-D) or fixed-length samples (2-D, one window inside a row)."""

    name: str
    weight: float
    ids: torch.Tensor
    path: str | None = None

    @property
    def tokens(self) -> int:
        return self.ids.numel()

    def describe(self) -> dict:
        return {"name": self.name, "weight": self.weight, "tokens": self.tokens,
                **({"path": self.path} if self.path else {})}


def parse(spec: str) -> list[tuple[str, str | None, float]]:
    """`name[=path][:weight],...` -> [(name, path, weight)]; one-line errors for anything else."""
    items = []
    for part in (p.strip() for p in (spec or DEFAULT).split(",")):
        if not part:
            continue
        body, weight = part, 1.0
        if ":" in part:
            body, _, text = part.rpartition(":")
            try:
                weight = float(text)
            except ValueError:
                raise TensoredgeError(f"--data {part!r}: the weight after ':' must be a number, "
                                      "e.g. valid:0.5") from None
        name, _, path = body.partition("=")
        if name in EVAL_TEXTS:
            raise TensoredgeError(f"--data {name}: {name} is held out for evaluation and never trained on; "
                                  f"use {', '.join(SOURCES)}")
        if name not in SOURCES:
            raise TensoredgeError(f"--data {name}: unknown source; choose from {', '.join(SOURCES)} "
                                  "(generated=DIR for the teacher's samples)")
        if (name == "generated") != bool(path):
            raise TensoredgeError(f"--data {part!r}: " + ("give the samples folder, e.g. generated=DIR:0.5"
                                                          if name == "generated" else f"{name} takes no path"))
        if not weight > 0 or weight == float("inf"):
            raise TensoredgeError(f"--data {part!r}: a weight must be a positive number")
        items.append((name, path or None, weight))
    if not items:
        raise TensoredgeError("--data names no source: e.g. --data valid:0.5,books:0.5")
    if len({(n, p) for n, p, _ in items}) != len(items):
        raise TensoredgeError(f"--data {spec!r} names a source twice")
    return items


class DataMix:
    """The sources of a run and the batch of every step."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        total = sum(s.weight for s in sources)
        self.weights = torch.tensor([s.weight / total for s in sources], dtype=torch.float64)

    @classmethod
    def of_ids(cls, ids: torch.Tensor, name: str = DEFAULT) -> "DataMix":
        return cls([Source(name, 1.0, ids.long())])

    @classmethod
    def from_spec(cls, spec: str, tokenizer) -> "DataMix":
        """Load every source named by `spec` (see `parse`) for `tokenizer`."""
        from toolkit.heal.samples import load_samples

        sources = []
        for name, path, weight in parse(spec):
            if name == "generated":
                sources.append(Source(name, weight, load_samples(path, tokenizer).long(), str(Path(path))))
            else:
                sources.append(Source(name, weight, torch.tensor(text_ids(tokenizer, name), dtype=torch.long)))
        return cls(sources)

    def describe(self) -> list[dict]:
        return [s.describe() for s in self.sources]

    def check(self, seq_len: int) -> None:
        """A one-line error, before any training, when a source cannot give windows of `seq_len`."""
        for s in self.sources:
            room = s.ids.shape[-1] - seq_len
            if room < 0 or (s.ids.dim() == 1 and room < 1):
                length = "samples are" if s.ids.dim() == 2 else "text is"
                raise TensoredgeError(f"--seq-len {seq_len}: the {s.name} {length} {s.ids.shape[-1]} tokens long; "
                                      "use a shorter --seq-len" + (" or generate longer samples (--length)"
                                                                   if s.ids.dim() == 2 else ""))

    def batch(self, step: int, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
        """The (batch, seq_len) token ids of step `step`, the same in every run with this seed."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        if len(self.sources) == 1:
            which = [0] * batch
        else:
            which = torch.multinomial(self.weights, batch, replacement=True, generator=generator).tolist()
        rows = []
        for k in which:
            ids = self.sources[k].ids
            if ids.dim() == 1:
                start = int(torch.randint(0, len(ids) - seq_len, (1,), generator=generator))
                rows.append(ids[start : start + seq_len])
            else:
                row = int(torch.randint(0, ids.shape[0], (1,), generator=generator))
                start = int(torch.randint(0, ids.shape[1] - seq_len + 1, (1,), generator=generator))
                rows.append(ids[row, start : start + seq_len])
        return torch.stack(rows)
