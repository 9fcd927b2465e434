"""Truncated SVD of the whole embedding table: E ~ left @ right, left (V x r), right (r x d).

A token's row is left[id] @ right; a tied head contracts through the factors, h @ right^T @ left^T,
so it reads (V + d) r values per token instead of V d.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.errors import TensoredgeError


class LowRankEmbedding(Factorized):
    """Embedding E = left @ right of rank r."""

    def __init__(self, num_embeddings: int, dim: int, rank: int):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.left = nn.Parameter(torch.zeros(num_embeddings, rank), requires_grad=False)
        self.right = nn.Parameter(torch.zeros(rank, dim), requires_grad=False)
        self.record = {"method": "svd-table", "num_embeddings": num_embeddings, "dim": dim, "rank": rank}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.left[ids] @ self.right

    def dense_weight(self) -> torch.Tensor:
        return self.left @ self.right

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of a tied head, h @ E^T, without building E."""
        return (hidden @ self.right.T) @ self.left.T


class TableSVD:
    """`svd-table`: truncated SVD of the embedding table. Parameters: ratio=R or rank=R; head=..."""

    name = "svd-table"
    params = ("ratio", "rank")
    kinds = ("embedding",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> LowRankEmbedding:
        weight = module.weight.detach()
        count, dim = weight.shape
        ratio, rank = spec.number("ratio"), spec.number("rank")
        if (ratio is None) == (rank is None):
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. svd-table:ratio=4")
        if ratio is not None and ratio <= 1:
            raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
        rank = int(rank) if rank is not None else int(count * dim / ratio // (count + dim))
        if rank < 1 or rank * (count + dim) >= count * dim:
            raise TensoredgeError(f"rank {rank} for a {count}x{dim} table would not reduce parameters "
                                  f"(limit {count * dim // (count + dim)}): change the rank or ratio")
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        out = LowRankEmbedding(count, dim, rank)
        out.left.data.copy_((u[:, :rank] * s[:rank]).float())
        out.right.data.copy_(vh[:rank].float())
        return out

    def rebuild(self, record: dict, model: nn.Module) -> LowRankEmbedding:
        return LowRankEmbedding(record["num_embeddings"], record["dim"], record["rank"])


register(TableSVD())
