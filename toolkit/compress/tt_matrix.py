"""TT-matrix embedding (TT-Rec, Tensorized Embedding Layers): the whole V x d table as one tensor
train whose cores are shared by all tokens.

V is padded to v1 v2 v3 and d to d1 d2 d3; the table, reshaped to (v1 d1, v2 d2, v3 d3) with each
token's digits paired with the dimension's, is TT-SVD'd once (`tt_embedding.tt_svd` on one "row").
Core k is (R_{k-1}, v_k, d_k, R_k); a token's row is the product of the slices at its digits.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.compress.tt_embedding import fit_ranks, max_ranks, row_params, tensor_shape, tt_svd
from toolkit.errors import TensoredgeError


class TTMatrixEmbedding(Factorized):
    """Embedding from shared TT-matrix cores; `forward` contracts only the slices of `ids`."""

    def __init__(self, num_embeddings: int, dim: int, vocab_shape: tuple[int, ...], dim_shape: tuple[int, ...],
                 ranks: list[int]):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.vocab_shape, self.dim_shape = tuple(vocab_shape), tuple(dim_shape)
        full = [1, *ranks, 1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(full[k], v, d, full[k + 1]), requires_grad=False)
            for k, (v, d) in enumerate(zip(vocab_shape, dim_shape))
        )
        self.record = {"method": "ttm", "num_embeddings": num_embeddings, "dim": dim,
                       "vocab_shape": list(vocab_shape), "dim_shape": list(dim_shape), "ranks": list(ranks)}

    def digits(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Mixed-radix digits of token ids over vocab_shape, most significant first."""
        out, rest = [], ids
        for v in reversed(self.vocab_shape):
            out.append(rest % v)
            rest = torch.div(rest, v, rounding_mode="floor")
        return out[::-1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out = None  # (B, prefix of dims, R)
        for core, digit in zip(self.cores, self.digits(flat)):
            piece = core[:, digit].permute(1, 0, 2, 3)  # (B, R_{k-1}, d_k, R_k)
            if out is None:
                out = piece.reshape(flat.shape[0], -1, piece.shape[-1])
            else:
                out = torch.matmul(out, piece.reshape(flat.shape[0], piece.shape[1], -1))
                out = out.reshape(flat.shape[0], -1, piece.shape[-1])
        return out.reshape(flat.shape[0], -1)[:, : self.dim].reshape(*ids.shape, self.dim)

    def dense_weight(self) -> torch.Tensor:
        table = self.cores[0].reshape(-1, self.cores[0].shape[-1])  # (v1 d1, R1)
        for core in self.cores[1:]:
            table = (table @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
        order = len(self.cores)
        table = table.reshape(*[n for pair in zip(self.vocab_shape, self.dim_shape) for n in pair])
        table = table.permute(*range(0, 2 * order, 2), *range(1, 2 * order, 2))
        return table.reshape(math.prod(self.vocab_shape), -1)[: self.num_embeddings, : self.dim]


class TTMatrix:
    """`ttm`: TT-matrix of the whole table. Parameters: ratio=R or rank=R, order=N; head=..."""

    name = "ttm"
    params = ("ratio", "rank", "order")
    kinds = ("embedding",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> TTMatrixEmbedding:
        weight = module.weight.detach()
        count, dim = weight.shape
        order = int(spec.number("order") or 3)
        vocab_shape, dim_shape = tensor_shape(count, order), tensor_shape(dim, order)
        joint = tuple(v * d for v, d in zip(vocab_shape, dim_shape))
        ratio, rank = spec.number("ratio"), spec.number("rank")
        if (ratio is None) == (rank is None):
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. ttm:ratio=4")
        if ratio is not None:
            if ratio <= 1:
                raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
            ranks = fit_ranks(joint, count * dim, ratio, f"a {count}x{dim} table")
        else:
            ranks = [min(int(rank), lim) for lim in max_ranks(joint)]
        if row_params(joint, ranks) >= count * dim:
            raise TensoredgeError(f"'{spec}' would keep {row_params(joint, ranks)} values, not fewer than the "
                                  f"dense {count * dim}: lower the rank")
        padded = torch.zeros(math.prod(vocab_shape), math.prod(dim_shape), dtype=torch.float64)
        padded[:count, :dim] = weight
        paired = padded.reshape(*vocab_shape, *dim_shape)
        paired = paired.permute(*[i for k in range(order) for i in (k, order + k)]).reshape(1, -1)
        result = tt_svd(paired, joint, ranks)
        out = TTMatrixEmbedding(count, dim, vocab_shape, dim_shape, result.ranks)
        for param, core, v, d in zip(out.cores, result.cores, vocab_shape, dim_shape):
            param.data.copy_(core[0].reshape(core.shape[1], v, d, core.shape[-1]))
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TTMatrixEmbedding:
        return TTMatrixEmbedding(record["num_embeddings"], record["dim"], tuple(record["vocab_shape"]),
                                 tuple(record["dim_shape"]), record["ranks"])


register(TTMatrix())
