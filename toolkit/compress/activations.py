"""Calibration statistics of every linear's input, captured with forward hooks in one pass.

Per linear: token count, mean input, mean |input| per channel (ASVD's scaling) and the second
moment E[x x^T] (SVD-LLM's whitening; with the mean, the centred covariance that feature-space
PCA needs, since the output covariance is W Cov(x) W^T). Linears fed the very same tensor
(q/k/v, gate/up, GPT-2's c_attn) share one record. Statistics live in `ctx.cache`, so every
method and layer reuses one pass. Calibration text is WikiText-2 valid (`ctx.calibration_ids()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.base import max_positions
from toolkit.compress.context import Context

SEQUENCE = 512  # tokens per calibration sequence


@dataclass
class InputStats:
    """Running sums (float64) over the calibration tokens seen by one linear's input."""

    count: int
    total: torch.Tensor  # sum x
    total_abs: torch.Tensor  # sum |x|
    gram: torch.Tensor  # sum x x^T

    def to(self, device: str | torch.device) -> "InputStats":
        return InputStats(self.count, self.total.to(device), self.total_abs.to(device), self.gram.to(device))

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.total_abs / self.count

    @property
    def second_moment(self) -> torch.Tensor:
        """E[x x^T] per token."""
        return self.gram / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """E[(x - mean)(x - mean)^T] per token."""
        mean = self.mean
        return self.second_moment - mean[:, None] * mean[None, :]


def _new_stats(x: torch.Tensor) -> InputStats:
    dim = x.shape[-1]
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=x.device)  # noqa: E731
    return InputStats(0, zeros(dim), zeros(dim), zeros(dim, dim))


@torch.inference_mode()
def capture_inputs(model: nn.Module, paths: list[str], ids: torch.Tensor,
                   progress=None, device: str = "cpu") -> dict[str, InputStats]:
    """Run `ids` (1-D) through `model` in sequences of SEQUENCE tokens (or the model's context,
    if shorter); stats of each path's input. The pass runs on `device` (the model goes back where
    it was); the stats are returned on the CPU."""
    config = model.config
    length = min(SEQUENCE, max_positions(config))
    stats: dict[str, InputStats] = {}
    alias: dict[str, str] = {}  # path -> path whose (identical) input it shares
    seen: list[tuple[torch.Tensor, str]] = []  # inputs of the current batch (kept alive: compared by identity)

    def hook(path: str):
        def record(_module, inputs, _output):
            x = inputs[0]
            for tensor, owner in seen:
                if tensor is x:
                    alias.setdefault(path, owner)
                    return
            seen.append((x, path))
            flat = x.reshape(-1, x.shape[-1]).float()
            s = stats.setdefault(path, _new_stats(x))
            s.count += flat.shape[0]
            s.total += flat.double().sum(0)
            s.total_abs += flat.double().abs().sum(0)
            s.gram += (flat.T @ flat).double()  # one sequence in float32 (4x faster), summed in float64
        return record

    handles = [model.get_submodule(p).register_forward_hook(hook(p)) for p in paths]
    home = next(model.parameters()).device
    model.to(device)
    try:
        usable = ids[: len(ids) // length * length] if len(ids) >= length else ids
        batches = usable.reshape(-1, min(length, len(usable)))
        body = getattr(model, "base_model", model)  # the transformer without its LM head: logits are not needed
        for i, batch in enumerate(batches):
            seen.clear()
            body(batch[None].to(device))
            if progress:
                progress(f"calibration sequence {i + 1}/{len(batches)}")
    finally:
        seen.clear()
        for handle in handles:
            handle.remove()
        model.to(home)
    stats = {p: s.to("cpu") for p, s in stats.items()}
    return {p: stats[alias.get(p, p)] for p in paths if alias.get(p, p) in stats}


def input_stats(ctx: Context, paths: list[str], progress=None) -> dict[str, InputStats]:
    """Stats of the inputs of `paths` on the calibration ids, captured once per context.

    The first call captures every MLP and attention linear together (one pass over the model as
    it is then, normally still uncompressed), so later targets see the original activations.
    """
    from toolkit.compress.targets import find_targets

    cache = ctx.cache.setdefault("input_stats", {})
    missing = [p for p in paths if p not in cache]
    if missing:
        every = [p for t in ("mlp", "attention") for p in find_targets(ctx.model, ctx.family, t)]
        cache.update(capture_inputs(ctx.model, sorted(set(every) | set(missing)), ctx.calibration_ids(), progress,
                                     ctx.device))
    return {p: cache[p] for p in paths}
