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
from toolkit.compress.ratio import bump_within, check_ratio, step_over
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.compress.targets import linear_weight
from toolkit.compress.tt_embedding import (factor_shape, fit_ranks, max_ranks, next_ranks, ranks_for_budget, row_params,
                                          tt_svd, tt_svd_rows)
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
    """`tt-linear`: ratio=R (weight compression) or rank=R (cap on every TT rank); order=D (default 3).
    A target's layers meet ratio=R together, some taking one rank setting more (`compress_group`)."""

    name = "tt-linear"
    params = ("ratio", "rank", "order")
    kinds = ("linear",)

    @staticmethod
    def size(spec: MethodSpec) -> tuple[float | None, float | None]:
        ratio, rank = spec.number("ratio"), spec.number("rank")
        if (ratio is None) == (rank is None):
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. tt-linear:ratio=2")
        if ratio is not None and ratio <= 1:
            raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
        return ratio, rank

    @staticmethod
    def layout_of(module: nn.Module, spec: MethodSpec):
        """(weight, bias, layout, out_shape, in_shape, modes) of a linear for TT cores of order=D."""
        weight, bias, layout = linear_weight(module)
        order = int(spec.number("order") or 3)
        out_shape, in_shape = factor_shape(weight.shape[0], order), factor_shape(weight.shape[1], order)
        return weight, bias, layout, out_shape, in_shape, tuple(o * i for o, i in zip(out_shape, in_shape))

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> TTLinear:
        ratio, rank = self.size(spec)
        weight, bias, layout, out_shape, in_shape, modes = self.layout_of(module, spec)
        out_features, in_features = weight.shape
        if ratio is not None:
            ranks = fit_ranks(modes, out_features * in_features, ratio, f"a {out_features}x{in_features} linear")
        else:
            ranks = [min(int(rank), limit) for limit in max_ranks(modes)]
        return self.build(weight, bias, layout, out_shape, in_shape, ranks)

    def compress_group(self, paths: list[str], spec: MethodSpec, ctx: Context) -> dict[str, TTLinear]:
        """Every layer at the largest rank setting within the ratio, then, best error saved per
        parameter first, the next setting up while the target as a whole stays within it."""
        ratio, _ = self.size(spec)
        modules = {p: ctx.model.get_submodule(p) for p in paths}
        if ratio is None or len(paths) == 1:
            return {p: self.compress(m, spec, ctx) for p, m in modules.items()}
        layouts = {p: self.layout_of(m, spec) for p, m in modules.items()}
        low, high, extra, gain = {}, {}, [], []
        for p, (weight, _, _, out_shape, in_shape, modes) in layouts.items():
            dense = weight.numel()
            low[p] = ranks_for_budget(modes, dense / ratio, f"a {weight.shape[0]}x{weight.shape[1]} linear", dense)
            high[p] = next_ranks(modes, low[p])
            if high[p] is None:
                extra.append(float("inf"))
                gain.append(0.0)
                continue
            tensor = self.paired(weight, out_shape, in_shape)
            extra.append(float(row_params(modes, high[p]) - row_params(modes, low[p])))
            gain.append(float(tt_svd(tensor, modes, low[p]).discarded - tt_svd(tensor, modes, high[p]).discarded))
        dense = sum(lay[0].numel() for lay in layouts.values())
        left = dense / ratio - sum(row_params(layouts[p][5], low[p]) for p in paths)
        bumped = bump_within(extra, gain, left)
        kept = sum(row_params(layouts[p][5], high[p] if b else low[p]) for p, b in zip(paths, bumped))
        over = step_over([float("inf") if b else e for e, b in zip(extra, bumped)], dense, kept, ratio)
        if over is not None:
            bumped[over], kept = True, kept + extra[over]
        chosen = {p: high[p] if b else low[p] for p, b in zip(paths, bumped)}
        check_ratio(dense / kept, ratio, f"{len(paths)} linears together in TT cores", [dense / kept])
        out = {}
        for p, (weight, bias, layout, out_shape, in_shape, modes) in layouts.items():
            out[p] = self.build(weight, bias, layout, out_shape, in_shape, chosen[p])
        return out

    @staticmethod
    def paired(weight: torch.Tensor, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> torch.Tensor:
        """(o_1..o_d, i_1..i_d) -> one row of modes (o_1 i_1, ..., o_d i_d)."""
        order = len(out_shape)
        tensor = weight.double().reshape(*out_shape, *in_shape)
        return tensor.permute(*[p for k in range(order) for p in (k, order + k)]).reshape(1, -1)

    def build(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str, out_shape: tuple[int, ...],
              in_shape: tuple[int, ...], ranks: list[int]) -> TTLinear:
        out_features, in_features = weight.shape
        modes = tuple(o * i for o, i in zip(out_shape, in_shape))
        if min(ranks) < 1 or row_params(modes, ranks) >= out_features * in_features:
            raise TensoredgeError(
                f"TT ranks {ranks} for a {out_features}x{in_features} weight (cores {modes}) hold "
                f"{row_params(modes, ranks)} values, not fewer than the dense {out_features * in_features}: lower the rank"
            )
        out = TTLinear(out_shape, in_shape, ranks, bias is not None, layout)
        for param, core in zip(out.cores, tt_svd_rows(self.paired(weight, out_shape, in_shape), modes, ranks)):
            param.data.copy_(core[0].reshape(param.shape))
        if bias is not None:
            out.bias.data.copy_(bias)
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TTLinear:
        return TTLinear(tuple(record["out_shape"]), tuple(record["in_shape"]), record["ranks"], record["bias"],
                        record["layout"])


register(TensorTrainLinear())
