"""Truncated SVD of the whole embedding table: E ~ left @ right, left (V x r), right (r x d).

A token's row is left[id] @ right; a tied head contracts through the factors, h @ right^T @ left^T,
so it reads (V + d) r values per token instead of V d.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.ratio import TOLERANCE, check_ratio, off_by
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
        rank = int(rank) if rank is not None else self.rank_for(count, dim, ratio)
        if rank < 1 or rank * (count + dim) >= count * dim:
            raise TensoredgeError(f"rank {rank} for a {count}x{dim} table would not reduce parameters "
                                  f"(limit {count * dim // (count + dim)}): change the rank or ratio")
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        out = LowRankEmbedding(count, dim, rank)
        out.left.data.copy_((u[:, :rank] * s[:rank]).float())
        out.right.data.copy_(vh[:rank].float())
        return out

    @staticmethod
    def rank_for(count: int, dim: int, ratio: float) -> int:
        """The rank whose table is `ratio` times smaller: the largest at or under that size, else the
        next one up if that is within TOLERANCE; refused when neither is."""
        achieved = lambda r: count * dim / (r * (count + dim))  # noqa: E731
        rank = max(1, int(count * dim / ratio // (count + dim)))
        if off_by(achieved(rank), ratio) > TOLERANCE and off_by(achieved(rank + 1), ratio) <= TOLERANCE:
            rank += 1
        check_ratio(achieved(rank), ratio, f"a {count}x{dim} table as one SVD",
                    [achieved(r) for r in (rank - 1, rank, rank + 1) if 1 <= r and r * (count + dim) < count * dim])
        return rank

    def rebuild(self, record: dict, model: nn.Module) -> LowRankEmbedding:
        return LowRankEmbedding(record["num_embeddings"], record["dim"], record["rank"])


register(TableSVD())
