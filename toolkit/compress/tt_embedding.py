"""Per-token tensor-train embedding (TensorGPT): each row reshaped to a tensor and TT-SVD'd.

All rows are decomposed at once with batched SVDs; the module gathers only the cores of the
tokens it is asked for and contracts them, so the dense table never exists at inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.errors import TensoredgeError


def factor_shape(dim: int, order: int = 3) -> tuple[int, ...]:
    """The most balanced `order`-way factorisation of `dim` (largest factor smallest), sorted."""
    if order == 1:
        return (dim,)
    options = (
        (first, *factor_shape(dim // first, order - 1)) for first in range(1, dim + 1) if dim % first == 0
    )
    return tuple(sorted(min(options, key=max)))


def tensor_shape(dim: int, order: int = 3) -> tuple[int, ...]:
    """A shape for rows of length `dim`, padding awkward lengths (e.g. primes) up to 10%."""
    ideal = round(dim ** (1 / order))
    candidates = [factor_shape(d, order) for d in range(dim, dim + max(1, dim // 10) + 1)]
    # Prefer the smallest padding whose largest factor is within 2x of the balanced one.
    for shape in candidates:
        if max(shape) <= 2 * ideal:
            return shape
    return min(candidates, key=max)


def max_ranks(shape: tuple[int, ...]) -> list[int]:
    """The largest useful TT ranks r_1..r_{N-1} for a tensor of `shape`."""
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]


def row_params(shape: tuple[int, ...], ranks: list[int]) -> int:
    """Parameters one row's cores hold: sum of r_{k-1} n_k r_k."""
    full = [1, *ranks, 1]
    return sum(full[k] * n * full[k + 1] for k, n in enumerate(shape))


def ranks_for_budget(shape: tuple[int, ...], budget: int) -> list[int]:
    """The largest ranks whose per-row parameters fit `budget`: uniform cap, then greedy bumps."""
    limits = max_ranks(shape)
    ranks = [1] * len(limits)
    if row_params(shape, ranks) > budget:
        raise TensoredgeError(
            f"ratio too high for rows of shape {shape}: rank 1 already needs "
            f"{row_params(shape, ranks)} values per row; lower the ratio"
        )
    while True:
        grown = [min(r + 1, lim) for r, lim in zip(ranks, limits)]
        if grown == ranks or row_params(shape, grown) > budget:
            break
        ranks = grown
    bumped = True
    while bumped:
        bumped = False
        for k in sorted(range(len(ranks)), key=lambda k: ranks[k]):
            trial = ranks.copy()
            trial[k] += 1
            if trial[k] <= limits[k] and row_params(shape, trial) <= budget:
                ranks, bumped = trial, True
    return ranks


def tt_svd_rows(rows: torch.Tensor, shape: tuple[int, ...], ranks: list[int]) -> list[torch.Tensor]:
    """Batched TT-SVD: rows (V, prod(shape)) -> cores (V, r_{k-1}, n_k, r_k), ranks capped."""
    count = rows.shape[0]
    rest = rows.reshape(count, 1, -1)
    cores = []
    left = 1
    for n, cap in zip(shape[:-1], ranks):
        unfold = rest.reshape(count, left * n, -1)
        u, s, vh = torch.linalg.svd(unfold, full_matrices=False)
        rank = min(cap, s.shape[-1])
        cores.append(u[:, :, :rank].reshape(count, left, n, rank))
        rest = s[:, :rank, None] * vh[:, :rank, :]
        left = rank
    cores.append(rest.reshape(count, left, shape[-1], 1))
    return cores


class TTEmbedding(Factorized):
    """Embedding whose rows are tensor trains; `forward` gathers and contracts only `ids`."""

    def __init__(self, num_embeddings: int, dim: int, shape: tuple[int, ...], ranks: list[int]):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        full = [1, *ranks, 1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(num_embeddings, full[k], n, full[k + 1]), requires_grad=False)
            for k, n in enumerate(shape)
        )
        self.record = {
            "method": "tt",
            "num_embeddings": num_embeddings,
            "dim": dim,
            "tensor_shape": list(shape),
            "ranks": list(ranks),
        }

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return contract([core[flat] for core in self.cores], self.dim).reshape(*ids.shape, self.dim)

    def dense_weight(self) -> torch.Tensor:
        return contract(list(self.cores), self.dim)


def contract(cores: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Rows (B, dim) from per-row cores (B, r_{k-1}, n_k, r_k), by batched matmuls left to right."""
    count = cores[0].shape[0]
    out = cores[0].reshape(count, -1, cores[0].shape[-1])
    for core in cores[1:]:
        out = torch.matmul(out, core.reshape(count, core.shape[1], -1)).reshape(count, -1, core.shape[-1])
    return out.reshape(count, -1)[:, :dim]


class TensorTrainEmbedding:
    """`tt`: per-token TT. Parameters: ratio=R (compression of the table) or rank=R (cap), shape=AxBxC,
    head=shared|dense (what a tied LM head becomes; see toolkit.compress.shared_head)."""

    name = "tt"
    params = ("ratio", "rank", "shape", "order")
    kinds = ("embedding",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> TTEmbedding:
        weight = module.weight.detach()
        count, dim = weight.shape
        shape = spec.params.get("shape") or tensor_shape(dim, int(spec.number("order") or 3))
        if not isinstance(shape, tuple) or math.prod(shape) < dim:
            raise TensoredgeError(f"shape {shape} in '{spec}' must multiply to at least {dim}, e.g. shape=8x8x12")
        ratio, rank = spec.number("ratio"), spec.number("rank")
        if (ratio is None) == (rank is None):
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. tt:ratio=4")
        if ratio is not None:
            if ratio <= 1:
                raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
            ranks = ranks_for_budget(shape, int(dim / ratio))
        else:
            ranks = [min(int(rank), lim) for lim in max_ranks(shape)]
            if row_params(shape, ranks) >= dim:
                raise TensoredgeError(
                    f"rank {int(rank)} in '{spec}' keeps {row_params(shape, ranks)} values per row, "
                    f"not fewer than the dense {dim}: lower the rank"
                )
        padded = torch.nn.functional.pad(weight, (0, math.prod(shape) - dim))
        out = TTEmbedding(count, dim, shape, ranks)
        for param, core in zip(out.cores, tt_svd_rows(padded, shape, ranks)):
            param.data.copy_(core)
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TTEmbedding:
        return TTEmbedding(record["num_embeddings"], record["dim"], tuple(record["tensor_shape"]), record["ranks"])


register(TensorTrainEmbedding())
