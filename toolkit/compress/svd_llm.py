"""`svd-llm`: truncation-aware whitening (SVD-LLM, Wang et al. 2024). With S the Cholesky factor
of the calibration second moment (S S^T = E[x x^T]), truncating the SVD of W S and multiplying
back by S^-1 minimises E||(W - W_r) x||^2 exactly; the discarded squared singular values are
that error, which also makes it a direct per-layer sensitivity signal."""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.low_rank import Factorization, LowRankMethod, output_error
from toolkit.compress.registry import register
from toolkit.compress.targets import linear_weight
from toolkit.errors import TensoredgeError

DAMPING = 1e-6  # relative to the mean diagonal, added until the Cholesky succeeds (rank-deficient inputs)


def whitening(moment: torch.Tensor) -> torch.Tensor:
    """Lower-triangular S with S S^T = moment (+ the smallest damping that makes it definite)."""
    scale = float(moment.diagonal().mean()) or 1.0
    damping = DAMPING
    while True:
        eye = torch.eye(len(moment), dtype=moment.dtype, device=moment.device)
        factor, info = torch.linalg.cholesky_ex(moment + damping * scale * eye)
        if info == 0:
            return factor
        damping *= 10


class WhitenedSVD(LowRankMethod):
    """`svd-llm`: ratio=R or rank=R; calibration on WikiText-2 valid."""

    name = "svd-llm"
    needs_calibration = True

    def factorize(self, module: nn.Module, path: str | None, ctx: Context | None) -> Factorization:
        stats = (ctx.cache.get("input_stats", {}) if ctx is not None else {}).get(path)
        if stats is None:
            raise TensoredgeError("svd-llm needs calibration statistics: compress through compress_ with a tokenizer")
        weight, bias, layout = linear_weight(module)
        device = ctx.device if ctx is not None else "cpu"  # float64 linear algebra on the GPU when there is one
        moment = stats.second_moment.to(device)
        white = whitening(moment)
        u, s, vh = torch.linalg.svd(weight.to(device).double() @ white, full_matrices=False)
        root = s.sqrt()
        up = u * root
        down = torch.linalg.solve_triangular(white, root[:, None] * vh, upper=False, left=False)  # (√s V^T) S^-1
        error, energy = output_error(up, down, moment)
        return Factorization(up.cpu(), down.cpu(), error.cpu(), energy, None if bias is None else bias.detach().cpu(),
                             layout, self.name)


register(WhitenedSVD())
