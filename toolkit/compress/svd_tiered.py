"""Frequency-tiered low-rank table (`svd-tiered`): the tokens a text uses most keep their exact rows;
the rest fall in tiers by frequency, each a truncated SVD of its own rows, weighted by how often
each token occurs (counts in the calibration texts, `--calibration`, plus one) and given ranks by the same measure.

A tied head contracts through the tiers: logits = [h E_0^T, (h R_t^T) L_t^T, ...] gathered back
into token order, so it reads the table's stored values (`ratio` times fewer than dense) per token
instead of the whole V x d table. The frequent tokens' logits, most of the probability mass, stay
exact; that is why this head keeps its quality where a rank-halved SVD of the whole table (flat
spectrum) does not (docs/healing.md).

Every stored matrix is an `nn.Linear` weight in (out, in) layout, so quantization-aware healing and
the int4 export quantize it as MatMulNBits holds it, and the table's rows and the head read the
same codes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.ratio import check_ratio
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.errors import TensoredgeError

EXACT = 4096  # rows kept exact by default: about 85-90% of WikiText-2 valid's tokens for SmolLM2's vocabulary
TIERS = 2


class TieredLowRankEmbedding(Factorized):
    """Table rows in tier order: `exact` (K rows as they are), then tier t = left[t] @ right[t].
    `slot[token]` is the token's row in that order (int32, one per token)."""

    def __init__(self, num_embeddings: int, dim: int, exact: int, tiers: list[dict]):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.exact = nn.Linear(dim, exact, bias=False)
        self.right = nn.ModuleList(nn.Linear(dim, t["rank"], bias=False) for t in tiers)
        self.left = nn.ModuleList(nn.Linear(t["rank"], t["count"], bias=False) for t in tiers)
        self.register_buffer("slot", torch.zeros(num_embeddings, dtype=torch.int32))
        self.starts = [exact]
        for t in tiers[:-1]:
            self.starts.append(self.starts[-1] + t["count"])
        self.record = {"method": "svd-tiered", "num_embeddings": num_embeddings, "dim": dim, "exact": exact,
                       "tiers": tiers}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        row = self.slot[ids].long()
        out = self.exact.weight[row.clamp(max=self.exact.out_features - 1)]
        for start, left, right in zip(self.starts, self.left, self.right):
            place = (row - start).clamp(0, left.out_features - 1)
            out = torch.where((row >= start)[..., None], left.weight[place] @ right.weight, out)
        return out

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of a tied head, h @ E^T, through the tiers."""
        parts = [self.exact(hidden)] + [left(right(hidden)) for left, right in zip(self.left, self.right)]
        return torch.cat(parts, dim=-1).index_select(-1, self.slot.long())

    def dense_weight(self) -> torch.Tensor:
        parts = [self.exact.weight] + [left.weight @ right.weight for left, right in zip(self.left, self.right)]
        return torch.cat(parts).index_select(0, self.slot.long())

    def stored_values(self) -> int:
        """Values the head reads per token (the slot map counted as one value a row)."""
        return sum(p.numel() for p in self.parameters()) + self.num_embeddings


def weighted_factors(rows: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U S, Vh, S^2) of diag(sqrt(weight)) @ rows by an eigh of its d x d Gram matrix (float64), with
    the row weighting undone in U S: rows ~ (U S)[:, :r] @ Vh[:r] minimises sum_i weight_i |error_i|^2."""
    scaled = rows.double() * weight.double().sqrt()[:, None]
    energy, vectors = torch.linalg.eigh(scaled.T @ scaled)
    energy, vectors = energy.flip(0).clamp(min=0), vectors.flip(1)
    return rows.double() @ vectors, vectors.T, energy


def choose_ranks(energies: list[torch.Tensor], counts: list[int], dim: int, budget: float) -> list[int]:
    """Ranks per tier, greedily: the next rank is the one that removes the most weighted error per
    stored value (n_t + d values), while the total fits in `budget` values; never a rank whose
    factors would hold as many values as the tier's dense rows."""
    ranks = [0] * len(energies)
    while True:
        best, gain = None, 0.0
        for t, (energy, n) in enumerate(zip(energies, counts)):
            r = ranks[t]
            if r < len(energy) and (r + 1) * (n + dim) < n * dim and n + dim <= budget:
                if energy[r] / (n + dim) > gain:
                    best, gain = t, float(energy[r]) / (n + dim)
        if best is None:
            return ranks
        ranks[best] += 1
        budget -= counts[best] + dim


class TieredTableSVD:
    """`svd-tiered:ratio=R[,exact=K][,tiers=T]`: the K most frequent tokens exact, the others in T
    frequency tiers (geometric in size) of weighted truncated SVDs; the table (and a shared head's
    read per token) R times smaller. Counts come from the calibration texts (never a held-out one)."""

    name = "svd-tiered"
    params = ("ratio", "exact", "tiers")
    kinds = ("embedding",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> TieredLowRankEmbedding:
        from toolkit.compress.tt_embedding import token_counts

        weight = module.weight.detach().float().cpu()
        count, dim = weight.shape
        ratio = spec.number("ratio")
        if ratio is None or ratio <= 1:
            raise TensoredgeError(f"'{spec}' needs ratio= above 1, e.g. svd-tiered:ratio=2")
        exact = int(spec.number("exact") if spec.number("exact") is not None else min(EXACT, count // 8))
        tiers = int(spec.number("tiers") or TIERS)
        budget = count * dim / ratio - exact * dim - count  # values left for the low-rank tiers
        if not 0 <= exact < count or budget <= 0:
            most = count * dim / (exact * dim + count + tiers * (dim + 1)) if 0 <= exact < count else 0
            raise TensoredgeError(f"'{spec}': {exact} exact rows of {count} leave no room for the other tiers "
                                  f"(the most it reaches is {most:.3g}x): lower exact= or the ratio")
        if ctx is None:
            raise TensoredgeError("svd-tiered needs the compression context (calibration text): use compress_")
        counts = token_counts(ctx, count).double()
        norms = weight.norm(dim=-1).double()
        order = (counts + norms / (norms.max() + 1)).argsort(descending=True)  # frequency, then row norm
        edges = [exact] + [round(exact * (count / max(exact, 1)) ** ((t + 1) / tiers)) for t in range(tiers)]
        edges[-1] = count
        groups = [order[a:b] for a, b in zip(edges, edges[1:]) if b > a]
        factors = [weighted_factors(weight[g], counts[g] + 1) for g in groups]
        ranks = choose_ranks([f[2] for f in factors], [len(g) for g in groups], dim, budget)
        kept = [(g, f, r) for g, f, r in zip(groups, factors, ranks) if r > 0]
        if len(kept) < len(groups):
            raise TensoredgeError(f"'{spec}' leaves a tier with no rank: lower the ratio, exact= or tiers=")
        out = TieredLowRankEmbedding(count, dim, exact, [{"count": len(g), "rank": r} for g, _, r in kept])
        out.exact.weight.data.copy_(weight[order[:exact]])
        for left, right, (_, (us, vh, _), r) in zip(out.left, out.right, kept):
            left.weight.data.copy_(us[:, :r].float())
            right.weight.data.copy_(vh[:r].float())
        slot = torch.empty(count, dtype=torch.int32)
        slot[order] = torch.arange(count, dtype=torch.int32)
        out.slot.copy_(slot)
        check_ratio(count * dim / out.stored_values(), ratio, f"a {count}x{dim} table in frequency tiers")
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TieredLowRankEmbedding:
        return TieredLowRankEmbedding(record["num_embeddings"], record["dim"], record["exact"], record["tiers"])


register(TieredTableSVD())
