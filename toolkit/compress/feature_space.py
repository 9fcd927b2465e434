"""`feature`: feature-space decomposition (as in SFSD). PCA of the layer's outputs on calibration
text: y ~ P P^T (y - mean) + mean, so W_r = P_r P_r^T W and the mean correction
(I - P_r P_r^T) W E[x] becomes a bias. The output covariance is W Cov(x) W^T, so the input
statistics of one calibration pass suffice; the discarded eigenvalues are the output error."""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.low_rank import Factorization, LowRankMethod, output_error
from toolkit.compress.registry import register
from toolkit.compress.svd_llm import whitening
from toolkit.compress.targets import linear_weight
from toolkit.errors import TensoredgeError


class FeatureSpace(LowRankMethod):
    """`feature`: ratio=R or rank=R; calibration on WikiText-2 valid. Adds a bias (the mean correction)."""

    name = "feature"
    needs_calibration = True

    def factorize(self, module: nn.Module, path: str | None, ctx: Context | None) -> Factorization:
        stats = (ctx.cache.get("input_stats", {}) if ctx is not None else {}).get(path)
        if stats is None:
            raise TensoredgeError("feature needs calibration statistics: compress through compress_ with a tokenizer")
        weight, bias, layout = linear_weight(module)
        w = weight.double()
        covariance = stats.covariance
        # eigenvectors of the output covariance W C W^T = left singular vectors of W L (L L^T = C)
        basis = torch.linalg.svd(w @ whitening(covariance), full_matrices=False)[0]
        mean_out = w @ stats.mean
        up, down = basis, basis.T @ w
        error, energy = output_error(up, down, covariance)
        return Factorization(up, down, error, energy, None if bias is None else bias.detach(), layout, self.name,
                             shift=mean_out, coef=basis.T @ mean_out)


register(FeatureSpace())
