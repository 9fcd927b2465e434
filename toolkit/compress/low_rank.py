"""Truncated SVD of a linear layer into two thin linears (rank r)."""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.compress.targets import linear_weight
from toolkit.errors import TensoredgeError


class LowRankLinear(Factorized):
    """y = up(down(x)): `down` is (rank x in), `up` is (out x rank) with the original bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, layout: str):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)
        self.requires_grad_(False)
        self.record = {
            "method": "svd",
            "in_features": in_features,
            "out_features": out_features,
            "rank": rank,
            "bias": bias,
            "layout": layout,  # "linear" (out x in) or "conv1d" (GPT-2's in x out)
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        weight = self.up.weight @ self.down.weight
        return weight.T if self.record["layout"] == "conv1d" else weight

    def dense_bias(self) -> torch.Tensor | None:
        return self.up.bias


def rank_for_ratio(in_features: int, out_features: int, bias: int, ratio: float) -> int:
    """The largest rank whose factors plus the kept bias hold at most 1/ratio of the dense layer."""
    dense = in_features * out_features + bias
    return int((dense / ratio - bias) // (in_features + out_features))


class TruncatedSVD:
    """`svd`: truncated SVD. Parameters: ratio=R (weight compression) or rank=R."""

    name = "svd"
    params = ("ratio", "rank")
    kinds = ("linear",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> LowRankLinear:
        weight, bias, layout = linear_weight(module)
        out_features, in_features = weight.shape
        ratio, rank = spec.number("ratio"), spec.number("rank")
        if (ratio is None) == (rank is None):
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. svd:ratio=1.5")
        if ratio is not None and ratio <= 1:
            raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
        bias_count = 0 if bias is None else bias.numel()
        rank = int(rank) if rank is not None else rank_for_ratio(in_features, out_features, bias_count, ratio)
        if rank < 1 or rank * (in_features + out_features) >= in_features * out_features:
            raise TensoredgeError(
                f"rank {rank} for a {out_features}x{in_features} weight would not reduce parameters "
                f"(limit {in_features * out_features // (in_features + out_features)}): lower the rank or ratio"
            )
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        root = s[:rank].sqrt()
        out = LowRankLinear(in_features, out_features, rank, bias is not None, layout)
        out.down.weight.copy_((root[:, None] * vh[:rank]).float())
        out.up.weight.copy_((u[:, :rank] * root).float())
        if bias is not None:
            out.up.bias.copy_(bias)
        return out

    def rebuild(self, record: dict, model: nn.Module) -> LowRankLinear:
        return LowRankLinear(
            record["in_features"], record["out_features"], record["rank"], record["bias"], record["layout"]
        )


register(TruncatedSVD())
