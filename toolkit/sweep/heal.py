"""`sweep ... --heal STEPS`: each compressed point distilled towards the dense model before it is scored,
so that a sweep compares variants after the same healing, not only training-free."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass

import torch


@dataclass
class HealSettings:
    """Every parameter distilled towards the dense model: on `data` (a `tensoredge heal --data` spec of
    sources and weights) or, without it, on the first `tokens` WikiText-2 valid tokens."""

    steps: int
    batch: int = 4
    seq_len: int = 256
    lr: float = 1e-4
    tokens: int = 65536
    data: str | None = None

    def record(self) -> dict:
        """The settings as a sweep's JSON and resume key hold them (`data` only when it was given, so that
        a sweep healed on valid still resumes from rows written before `data` existed)."""
        return {k: v for k, v in asdict(self).items() if not (k == "data" and v is None)}


def distillation_text(settings: HealSettings, tokenizer):
    """What `heal_trial` trains on: the DataMix of `settings.data`, checked against the sequence length,
    or the first `settings.tokens` WikiText-2 valid ids."""
    if settings.data:
        from toolkit.heal.mix import DataMix

        mix = DataMix.from_spec(settings.data, tokenizer)
        mix.check(settings.seq_len)
        return mix
    from toolkit.compress.context import valid_ids

    return valid_ids(tokenizer)[: settings.tokens]


def check_data(spec: str | None) -> None:
    """A bad `--heal-data` spec (unknown source, a held-out text, samples not written) is one line, before
    any model loads."""
    if not spec:
        return
    from toolkit.errors import TensoredgeError
    from toolkit.heal.mix import parse
    from toolkit.heal.samples import read_info

    try:
        for name, path, _weight in parse(spec):
            if name == "generated":
                read_info(path)
    except TensoredgeError as exc:  # heal's own message, named as the sweep's option
        raise TensoredgeError("--heal-data " + str(exc).removeprefix("--data ")) from None


def heal_trial(trial: torch.nn.Module, teacher: torch.nn.Module, data, settings: HealSettings,
               device: str = "cpu") -> dict:
    """Distil `trial` in place for `settings.steps` steps (toolkit.heal); the teacher goes back to the CPU.
    Returns the row's `heal` record: steps, seconds and the first and last training KL."""
    from toolkit.heal.loop import HealConfig, heal

    config = HealConfig(steps=settings.steps, batch=settings.batch, seq_len=settings.seq_len, lr=settings.lr,
                        train="all", checkpoint_every=settings.steps)
    with tempfile.TemporaryDirectory(prefix="tensoredge-heal-") as tmp:
        record = heal(trial, teacher, data, config, tmp, device=device, resume=None)
    teacher.to("cpu")
    trial.eval()
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    return {"heal": {"steps": record["steps_done"], "seconds": record["seconds"], "lr": settings.lr,
                     "batch": settings.batch, "seq_len": settings.seq_len,
                     "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}}
