"""`asvd`: activation-aware SVD (ASVD, Yuan et al. 2023). The weight's input channels are scaled
by the calibration mean |x| to the power alpha before the SVD, and unscaled after, so channels
that carry large activations are kept more faithfully."""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.low_rank import Factorization, LowRankMethod, output_error
from toolkit.compress.registry import register
from toolkit.compress.targets import linear_weight
from toolkit.errors import TensoredgeError

ALPHA = 0.5  # the ASVD paper's default


class ActivationAwareSVD(LowRankMethod):
    """`asvd`: ratio=R or rank=R; calibration on WikiText-2 valid."""

    name = "asvd"
    needs_calibration = True

    def factorize(self, module: nn.Module, path: str | None, ctx: Context | None) -> Factorization:
        stats = (ctx.cache.get("input_stats", {}) if ctx is not None else {}).get(path)
        if stats is None:
            raise TensoredgeError("asvd needs calibration statistics: compress through compress_ with a tokenizer")
        weight, bias, layout = linear_weight(module)
        scale = stats.mean_abs.clamp_min(1e-6) ** ALPHA
        u, s, vh = torch.linalg.svd(weight.double() * scale, full_matrices=False)
        root = s.sqrt()
        up, down = u * root, root[:, None] * vh / scale
        error, energy = output_error(up, down, stats.second_moment)
        return Factorization(up, down, error, energy, None if bias is None else bias.detach(), layout, self.name)


register(ActivationAwareSVD())
