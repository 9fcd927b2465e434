"""`tt-linear`: tensor-train matrix layers (TT-SVD of the reshaped weight, as in TT-LoRA).

W (out x in) with out = o_1..o_d and in = i_1..i_d is viewed as a tensor of modes (o_k i_k) and
TT-SVD'd into cores (r_{k-1}, o_k, i_k, r_k). The forward pass contracts the cores with the input
one mode at a time; W itself is never formed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.compress.targets import linear_weight
from toolkit.compress.tt_embedding import factor_shape, max_ranks, ranks_for_budget, row_params, tt_svd_rows
from toolkit.errors import TensoredgeError


class TTLinear(Factorized):
    """y = TT(x) + bias with cores (r_{k-1}, o_k, i_k, r_k)."""

    def __init__(self, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: list[int], bias: bool, layout: str):
        super().__init__()
        full = [1, *ranks, 1]
        self.out_shape, self.in_shape = tuple(out_shape), tuple(in_shape)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(full[k], o, i, full[k + 1]), requires_grad=False)
            for k, (o, i) in enumerate(zip(out_shape, in_shape))
        )
        self.bias = nn.Parameter(torch.zeros(math.prod(out_shape)), requires_grad=False) if bias else None
        self.record = {"method": "tt-linear", "out_shape": list(out_shape), "in_shape": list(in_shape),
                       "ranks": list(ranks), "bias": bias, "layout": layout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        state = x.reshape(-1, 1, self.in_shape[0], math.prod(self.in_shape[1:]))  # (n, r, i_k, rest)
        for k, core in enumerate(self.cores):
            state = torch.einsum("nrjR,rojs->nosR", state, core)  # outputs so far join n
            rest = self.in_shape[k + 1 :]
            state = state.reshape(-1, core.shape[-1], rest[0] if rest else 1, math.prod(rest[1:]))
        out = state.reshape(*lead, math.prod(self.out_shape))
        return out if self.bias is None else out + self.bias

    def dense_weight(self) -> torch.Tensor:
        weight = self(torch.eye(math.prod(self.in_shape)))  # row j = W e_j + b
        if self.bias is not None:
            weight = weight - self.bias
        return weight if self.record["layout"] == "conv1d" else weight.T

    def dense_bias(self) -> torch.Tensor | None:
        return self.bias


class TensorTrainLinear:
    """`tt-linear`: ratio=R (weight compression) or rank=R (cap on every TT rank); order=D (default 3)."""

    name = "tt-linear"
    params = ("ratio", "rank", "order")
    kinds = ("linear",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> TTLinear:
        weight, bias, layout = linear_weight(module)
        out_features, in_features = weight.shape
        order = int(spec.number("order") or 3)
        out_shape, in_shape = factor_shape(out_features, order), factor_shape(in_features, order)
        modes = tuple(o * i for o, i in zip(out_shape, in_shape))
        ratio, rank = spec.number("ratio"), spec.number("rank")
        if (ratio is None) == (rank is None):
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. tt-linear:ratio=2")
        if ratio is not None:
            if ratio <= 1:
                raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
            ranks = ranks_for_budget(modes, int(out_features * in_features / ratio))
        else:
            ranks = [min(int(rank), limit) for limit in max_ranks(modes)]
        if min(ranks) < 1 or row_params(modes, ranks) >= out_features * in_features:
            raise TensoredgeError(
                f"TT ranks {ranks} for a {out_features}x{in_features} weight (cores {modes}) hold "
                f"{row_params(modes, ranks)} values, not fewer than the dense {out_features * in_features}: lower the rank"
            )
        # (o_1..o_d, i_1..i_d) -> (o_1 i_1, ..., o_d i_d)
        tensor = weight.double().reshape(*out_shape, *in_shape)
        tensor = tensor.permute(*[p for k in range(order) for p in (k, order + k)]).reshape(1, -1)
        out = TTLinear(out_shape, in_shape, ranks, bias is not None, layout)
        for param, core in zip(out.cores, tt_svd_rows(tensor, modes, ranks)):
            param.data.copy_(core[0].reshape(param.shape))
        if bias is not None:
            out.bias.data.copy_(bias)
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TTLinear:
        return TTLinear(tuple(record["out_shape"]), tuple(record["in_shape"]), record["ranks"], record["bias"],
                        record["layout"])


register(TensorTrainLinear())
