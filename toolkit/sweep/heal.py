"""`sweep ... --heal STEPS`: each compressed point distilled towards the dense model before it is scored,
so that a sweep compares variants after the same healing, not only training-free."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch


@dataclass
class HealSettings:
    """Every parameter distilled towards the dense model on the first `tokens` WikiText-2 valid tokens."""

    steps: int
    batch: int = 4
    seq_len: int = 256
    lr: float = 1e-4
    tokens: int = 65536


def heal_trial(trial: torch.nn.Module, teacher: torch.nn.Module, ids: torch.Tensor, settings: HealSettings,
               device: str = "cpu") -> dict:
    """Distil `trial` in place for `settings.steps` steps (toolkit.heal); the teacher goes back to the CPU.
    Returns the row's `heal` record: steps, seconds and the first and last training KL."""
    from toolkit.heal.loop import HealConfig, heal

    config = HealConfig(steps=settings.steps, batch=settings.batch, seq_len=settings.seq_len, lr=settings.lr,
                        train="all", checkpoint_every=settings.steps)
    with tempfile.TemporaryDirectory(prefix="tensoredge-heal-") as tmp:
        record = heal(trial, teacher, ids, config, tmp, device=device, resume=None)
    teacher.to("cpu")
    trial.eval()
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    return {"heal": {"steps": record["steps_done"], "seconds": record["seconds"], "lr": settings.lr,
                     "batch": settings.batch, "seq_len": settings.seq_len,
                     "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}}
