"""TT-LoRA: a layer's update ΔW written as a tensor-train matrix, added beside the frozen layer.

ΔW (out x in) is reshaped to a TT-matrix with out = o_1...o_d and in = i_1...i_d; core k has
shape (r_{k-1}, o_k, i_k, r_k). The last core starts at zero, so a fresh adapter changes nothing
(as LoRA's B = 0). The base may be dense (nn.Linear, GPT-2's Conv1D) or factorized.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.compress.targets import linear_weight
from toolkit.compress.tt_embedding import factor_shape
from toolkit.errors import TensoredgeError


@dataclass(frozen=True)
class TTLoRAConfig:
    """Adapter shape: `rank` caps every TT bond, `order` cores, update scaled by `alpha`."""

    rank: int = 4
    order: int = 3
    alpha: float = 1.0

    def __post_init__(self):
        if self.rank < 1 or self.order < 1:
            raise TensoredgeError(f"TT-LoRA needs rank >= 1 and order >= 1 (got rank={self.rank}, order={self.order})")


def tt_matrix_ranks(out_shape: tuple[int, ...], in_shape: tuple[int, ...], cap: int) -> list[int]:
    """Bond ranks r_1..r_{d-1}: `cap`, limited by what each side of a bond can hold."""
    sizes = [o * i for o, i in zip(out_shape, in_shape)]
    return [min(cap, math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1)]


def tt_matrix(cores: list[torch.Tensor]) -> torch.Tensor:
    """Contract TT-matrix cores (r, o_k, i_k, r') into the (prod o) x (prod i) matrix."""
    out = cores[0][0]  # (o_1, i_1, r_1)
    for core in cores[1:]:
        rows, cols = out.shape[0] * core.shape[1], out.shape[1] * core.shape[2]
        out = torch.einsum("abr,rcdz->acbdz", out, core).reshape(rows, cols, core.shape[-1])
    return out[..., 0]


class TTLoRA(nn.Module):
    """y = base(x) + alpha * x ΔW^T, with ΔW a trainable tensor-train matrix."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, config: TTLoRAConfig,
                 layout: str):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features, self.layout = in_features, out_features, layout
        self.config = config
        self.out_shape = factor_shape(out_features, config.order)
        self.in_shape = factor_shape(in_features, config.order)
        full = [1, *tt_matrix_ranks(self.out_shape, self.in_shape, config.rank), 1]
        self.cores = nn.ParameterList()
        for k, (o, i) in enumerate(zip(self.out_shape, self.in_shape)):
            core = torch.randn(full[k], o, i, full[k + 1]) / math.sqrt(full[k] * i)
            self.cores.append(nn.Parameter(core if k < config.order - 1 else torch.zeros_like(core)))

    @property
    def record(self) -> dict:
        """What is needed to rebuild the empty adapter (goes into adapter.json)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "layout": self.layout,
                **asdict(self.config)}

    def delta_weight(self) -> torch.Tensor:
        """The scaled update alpha * ΔW, out x in."""
        return self.config.alpha * tt_matrix(list(self.cores))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(x, self.delta_weight().to(x.dtype))


def wrap(base: nn.Module, config: TTLoRAConfig) -> TTLoRA:
    """A TT-LoRA adapter around `base` (a linear, Conv1D, or a factorized linear)."""
    if hasattr(base, "record") and "in_features" in getattr(base, "record", {}):
        record = base.record
        return TTLoRA(base, record["in_features"], record["out_features"], config, record.get("layout", "linear"))
    weight, _bias, layout = linear_weight(base)
    return TTLoRA(base, weight.shape[1], weight.shape[0], config, layout)
