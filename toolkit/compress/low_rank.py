"""Two thin linears (rank r) in place of one: truncated SVD, and the shared machinery of every
method that ends in a `LowRankLinear` (ASVD, SVD-LLM, feature-space).

Such a method computes a `Factorization` of a layer once (all ranks, ordered by importance,
with the calibration output error each rank leaves); truncating it to any rank is then free,
which is what budgeted rank allocation (toolkit.compress.budget) needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.ratio import TOLERANCE, bump_within, check_ratio, off_by, step_over
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.compress.targets import linear_weight
from toolkit.errors import TensoredgeError


class LowRankLinear(Factorized):
    """y = up(down(x)): `down` is (rank x in), `up` is (out x rank) with the original bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, layout: str, fit: str = "svd"):
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
            "fit": fit,  # the method that chose the factors; all rebuild the same way
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        weight = self.up.weight @ self.down.weight
        return weight.T if self.record["layout"] == "conv1d" else weight

    def dense_bias(self) -> torch.Tensor | None:
        return self.up.bias


@dataclass
class Factorization:
    """A layer at every rank: W_r = up[:, :r] @ down[:r]; bias_r = bias + shift - up[:, :r] @ coef[:r].

    `error[r]` is the calibration output error per token, E||(W - W_r) x||^2 (after the bias
    correction, where the method makes one); `energy` is E||W x||^2 on the same terms.
    """

    up: torch.Tensor  # (out, k) float64
    down: torch.Tensor  # (k, in) float64
    error: torch.Tensor  # (k + 1,)
    energy: float
    bias: torch.Tensor | None  # the original bias
    layout: str
    fit: str
    shift: torch.Tensor | None = None  # mean correction (feature-space): output gains a bias
    coef: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    @property
    def in_features(self) -> int:
        return self.down.shape[1]

    @property
    def has_bias(self) -> bool:
        return self.bias is not None or self.shift is not None

    def dense_params(self) -> int:
        return self.out_features * self.in_features + (0 if self.bias is None else self.bias.numel())

    def params(self, rank: int) -> int:
        return rank * (self.out_features + self.in_features) + (self.out_features if self.has_bias else 0)

    def max_rank(self) -> int:
        """The largest rank that still holds fewer parameters than the dense layer."""
        per = self.out_features + self.in_features
        limit = (self.dense_params() - (self.out_features if self.has_bias else 0) - 1) // per
        return max(0, min(limit, self.up.shape[1]))

    def module(self, rank: int) -> LowRankLinear:
        """The layer at `rank`; refused when that would not reduce parameters."""
        if not 1 <= rank <= self.max_rank():
            raise TensoredgeError(
                f"rank {rank} for a {self.out_features}x{self.in_features} weight would not reduce parameters "
                f"(limit {self.max_rank()}): lower the rank or ratio"
            )
        out = LowRankLinear(self.in_features, self.out_features, rank, self.has_bias, self.layout, self.fit)
        out.down.weight.copy_(self.down[:rank].float())
        out.up.weight.copy_(self.up[:, :rank].float())
        if self.has_bias:
            bias = torch.zeros(self.out_features, dtype=torch.float64)
            if self.bias is not None:
                bias += self.bias.double()
            if self.shift is not None:
                bias += self.shift - self.up[:, :rank] @ self.coef[:rank]
            out.up.bias.copy_(bias.float())
        return out


def output_error(up: torch.Tensor, down: torch.Tensor, moment: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(error[r] for r = 0..k, energy) when up's columns are orthogonal: the discarded terms are
    ||up_j||^2 down_j^T M down_j, with M the input's second moment (or covariance)."""
    terms = (up * up).sum(0) * ((down @ moment) * down).sum(1)
    tail = torch.cat([terms.flip(0).cumsum(0).flip(0), terms.new_zeros(1)])
    return tail.clamp_min(0), float(tail[0])


def check_size(spec: MethodSpec) -> tuple[float | None, float | None]:
    """(ratio, rank) of `spec`: exactly one, and a ratio above 1."""
    ratio, rank = spec.number("ratio"), spec.number("rank")
    if (ratio is None) == (rank is None):
        raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. {spec.method}:ratio=1.5")
    if ratio is not None and ratio <= 1:
        raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
    return ratio, rank


def floor_rank(fact: Factorization, ratio: float) -> int:
    """The largest rank whose layer is at least `ratio` times smaller than the dense one."""
    bias = fact.out_features if fact.has_bias else 0
    return int((fact.dense_params() / ratio - bias) // (fact.in_features + fact.out_features))


def rank_of(fact: Factorization, spec: MethodSpec) -> int:
    """The rank `spec` asks for: rank=R, or ratio=R (the largest rank at most 1/R of the dense
    layer, else the next one up if that is within TOLERANCE; refused when neither is)."""
    ratio, rank = check_size(spec)
    if rank is not None:
        return int(rank)
    rank = max(1, floor_rank(fact, ratio))
    achieved = lambda r: fact.dense_params() / fact.params(r)  # noqa: E731
    if off_by(achieved(rank), ratio) > TOLERANCE and off_by(achieved(rank + 1), ratio) <= TOLERANCE:
        rank += 1
    check_ratio(achieved(rank), ratio, f"a {fact.out_features}x{fact.in_features} linear",
                [achieved(r) for r in (rank - 1, rank, rank + 1) if 1 <= r <= fact.max_rank()])
    return rank


def group_ranks(facts: dict[str, Factorization], ratio: float) -> dict[str, int]:
    """Ranks for a whole target at `ratio` (all its layers together `ratio` times smaller): each
    layer's largest rank within the ratio, then one rank more for the layers whose calibration
    error falls most per parameter, while the target's total stays within the ratio."""
    ranks = {p: max(1, min(floor_rank(f, ratio), f.max_rank())) for p, f in facts.items()}
    dense = sum(f.dense_params() for f in facts.values())
    kept = lambda: sum(f.params(ranks[p]) for p, f in facts.items())  # noqa: E731
    while True:  # rounds of one rank more, while the budget has room
        up = [p for p, f in facts.items() if ranks[p] < f.max_rank()]
        extra = [float(facts[p].in_features + facts[p].out_features) for p in up]
        gain = [float(facts[p].error[ranks[p]] - facts[p].error[ranks[p] + 1]) / max(facts[p].energy, 1e-30)
                for p in up]
        bumped = bump_within(extra, gain, dense / ratio - kept())
        if not any(bumped):
            break
        for path, more in zip(up, bumped):
            ranks[path] += more
    if (over := step_over(extra, dense, kept(), ratio)) is not None:
        ranks[up[over]] += 1
    check_ratio(dense / kept(), ratio, f"{len(facts)} linears together", [dense / kept()])
    return ranks


class LowRankMethod:
    """Shared by methods whose result is a LowRankLinear: subclasses define `factorize`."""

    name = "svd"
    params = ("ratio", "rank")
    kinds = ("linear",)
    needs_calibration = False

    def factorize(self, module: nn.Module, path: str | None, ctx: Context | None) -> Factorization:
        raise NotImplementedError

    def factorizations(self, paths: list[str], ctx: Context, progress=None) -> dict[str, Factorization]:
        """Factorizations of `paths` (cached in ctx.cache: every rank of a layer comes from one)."""
        if self.needs_calibration:
            from toolkit.compress.activations import input_stats

            input_stats(ctx, paths, progress)
        cache = ctx.cache.setdefault(f"factorizations:{self.name}", {})
        for i, path in enumerate(paths):
            if path not in cache:
                cache[path] = self.factorize(ctx.model.get_submodule(path), path, ctx)
                if progress and ((i + 1) % 20 == 0 or i + 1 == len(paths)):
                    progress(f"{self.name}: factorized {i + 1}/{len(paths)} layers")
        return {p: cache[p] for p in paths}

    def compress_group(self, paths: list[str], spec: MethodSpec, ctx: Context) -> dict[str, LowRankLinear]:
        """A ratio= is met by the target as a whole, mixing adjacent ranks across its layers."""
        ratio, _ = check_size(spec)
        facts = self.factorizations(paths, ctx)
        if ratio is not None and len(facts) > 1:
            return {path: facts[path].module(rank) for path, rank in group_ranks(facts, ratio).items()}
        return {path: fact.module(rank_of(fact, spec)) for path, fact in facts.items()}

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> LowRankLinear:
        fact = self.factorize(module, None, ctx)
        return fact.module(rank_of(fact, spec))

    def rebuild(self, record: dict, model: nn.Module) -> LowRankLinear:
        return LowRankLinear(record["in_features"], record["out_features"], record["rank"], record["bias"],
                             record["layout"], record.get("fit", "svd"))


class TruncatedSVD(LowRankMethod):
    """`svd`: truncated SVD of the weight. Parameters: ratio=R (weight compression) or rank=R."""

    name = "svd"

    def factorize(self, module: nn.Module, path: str | None, ctx: Context | None) -> Factorization:
        weight, bias, layout = linear_weight(module)
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        root = s.sqrt()
        up, down = u * root, root[:, None] * vh
        moment = self._moment(path, ctx, weight.shape[1])
        error, energy = output_error(up, down, moment)
        return Factorization(up, down, error, energy, None if bias is None else bias.detach(), layout, self.name)

    @staticmethod
    def _moment(path: str | None, ctx: Context | None, dim: int) -> torch.Tensor:
        """The input's second moment when calibration stats exist, else identity (weight error)."""
        stats = ctx.cache.get("input_stats", {}) if ctx is not None else {}
        return stats[path].second_moment if path in stats else torch.eye(dim, dtype=torch.float64)


register(TruncatedSVD())
