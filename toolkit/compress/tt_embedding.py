"""Per-token tensor-train embedding (TensorGPT): each row reshaped to a tensor and TT-SVD'd.

All rows are decomposed at once (`tt_svd`): each TT-SVD step takes the Gram matrix of every row's
unfolding in one batched matmul and one batched eigh of its small side, keeping only the top
eigenvectors; that is the same truncation as an SVD (tensorly's `tensor_train`) at a fraction of
the cost (benchmarks/tt_svd_speed.py). The module gathers only the cores of the tokens it is asked
for and contracts them, so the dense table never exists at inference.

Ranks: a cap (`rank=`), a relative error per row (`eps=`), or solved from a ratio (`ratio=`).
With `tiers=2` rows get one of two rank settings, which meets a ratio within a few percent and lets
frequent tokens (calibration text counts, `by=freq`) or large-norm rows (`by=norm`) get more rank.
"""

from __future__ import annotations

import functools
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.ratio import MIX_ABOVE, TOLERANCE, check_ratio, off_by, rows_in_high
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.errors import TensoredgeError


@functools.lru_cache(maxsize=None)
def factor_shape(dim: int, order: int = 3) -> tuple[int, ...]:
    """The most balanced `order`-way factorisation of `dim` (largest factor smallest), sorted."""
    if order == 1:
        return (dim,)
    smallest = int(round(dim ** (1 / order))) + 1  # the smallest factor of any factorisation is at most this
    options = (
        (first, *factor_shape(dim // first, order - 1)) for first in range(1, smallest + 1) if dim % first == 0
    )
    return tuple(sorted(min(options, key=max)))


def tensor_shape(dim: int, order: int = 3) -> tuple[int, ...]:
    """A shape for rows of length `dim`, padding awkward lengths (e.g. primes) up to 10%: the
    smallest padding whose largest factor is within 2x of the balanced one, else the most balanced."""
    ideal = round(dim ** (1 / order))
    candidates = []
    for padded in range(dim, dim + max(1, dim // 10) + 1):
        shape = factor_shape(padded, order)
        if max(shape) <= 2 * ideal:
            return shape
        candidates.append(shape)
    return min(candidates, key=max)


def max_ranks(shape: tuple[int, ...]) -> list[int]:
    """The largest useful TT ranks r_1..r_{N-1} for a tensor of `shape`."""
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]


def row_params(shape: tuple[int, ...], ranks: list[int]) -> int:
    """Parameters one row's cores hold: sum of r_{k-1} n_k r_k."""
    full = [1, *ranks, 1]
    return sum(full[k] * n * full[k + 1] for k, n in enumerate(shape))


def ranks_for_budget(shape: tuple[int, ...], budget: float, what: str = "", dense: float | None = None) -> list[int]:
    """The largest ranks whose parameters fit `budget`: uniform cap, then greedy bumps (so bonds
    may end with different ranks). `what` and `dense` word the error when even rank 1 is too big."""
    limits = max_ranks(shape)
    ranks = [1] * len(limits)
    least = row_params(shape, ranks)
    if least > budget:
        if dense and off_by(dense / least, dense / budget) <= TOLERANCE:
            return ranks  # rank 1 is a little over the budget, but within the tolerance
        reach = f", so the nearest it reaches is {dense / least:.4g}x" if dense else ""
        ask = f" {dense / budget:.4g}x" if dense else ""
        raise TensoredgeError(f"{what or 'cores'} of TT shape {shape} cannot be compressed{ask}: rank 1 already needs "
                              f"{least} values{reach}; lower the ratio or raise order=")
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


def fit_ranks(shape: tuple[int, ...], dense: float, ratio: float, what: str, radius: int = 3) -> list[int]:
    """Ranks for `dense / ratio` parameters: `ranks_for_budget`, then, where that leaves more than
    MIX_ABOVE of the budget unused, the ranks within `radius` of those that fill it best (never
    over it). Refused in one line when the result is still off by more than TOLERANCE."""
    budget = dense / ratio
    ranks = ranks_for_budget(shape, budget, what, dense)
    if off_by(dense / row_params(shape, ranks), ratio) > MIX_ABOVE:
        around = [range(max(1, r - radius), min(limit, r + radius) + 1) for r, limit in zip(ranks, max_ranks(shape))]
        for trial in itertools.product(*around):
            if row_params(shape, ranks) < row_params(shape, list(trial)) <= budget:
                ranks = list(trial)
    reachable = [dense / row_params(shape, ranks)]
    if (up := next_ranks(shape, ranks)) is not None:
        reachable.append(dense / row_params(shape, up))
    check_ratio(reachable[0], ratio, f"{what} (TT cores {shape})", reachable)
    return ranks


def next_ranks(shape: tuple[int, ...], ranks: list[int]) -> list[int] | None:
    """One bond one rank up, the bond that adds the fewest parameters (None when all are full)."""
    limits = max_ranks(shape)
    bumps = [ranks[:k] + [r + 1] + ranks[k + 1 :] for k, r in enumerate(ranks) if r < limits[k]]
    return min(bumps, key=lambda b: row_params(shape, b)) if bumps else None


def ranks_above(shape: tuple[int, ...], ranks: list[int]) -> list[int]:
    """The budget-greedy ranks of the next larger parameter count than `ranks` holds."""
    params, top = row_params(shape, ranks), row_params(shape, max_ranks(shape))
    for budget in range(params + 1, top + 1):
        grown = ranks_for_budget(shape, budget)
        if row_params(shape, grown) > params:
            return grown
    raise TensoredgeError(f"ranks {ranks} are already full for rows of shape {shape}: lower the ratio")


def batched_eigh(gram: torch.Tensor, parts: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh of a batch of small symmetric matrices. On CPU torch solves them one after
    another on one core, so the batch is split into `parts` (default: torch's threads) solved on
    threads at once (torch releases the GIL): the same results, sooner when the cores are idle."""
    parts = min(parts or torch.get_num_threads(), gram.shape[0] // 1024)
    if gram.device.type != "cpu" or parts < 2:
        return torch.linalg.eigh(gram)
    values, vectors = gram.new_empty(gram.shape[:-1]), torch.empty_like(gram)
    chunks = list(zip(gram.chunk(parts), values.chunk(parts), vectors.chunk(parts)))
    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(lambda chunk: torch.linalg.eigh(chunk[0], out=chunk[1:]), chunks))
    return values, vectors


@dataclass
class TTResult:
    """Cores (V, r_{k-1}, n_k, r_k), the ranks kept, and per row the squared norm each step discarded."""

    cores: list[torch.Tensor]
    ranks: list[int]
    discarded: torch.Tensor  # (V,) sum over steps of squared discarded singular values


def tt_svd(rows: torch.Tensor, shape: tuple[int, ...], ranks: list[int] | None = None,
           eps: float | None = None) -> TTResult:
    """Batched TT-SVD of rows (V, prod(shape)), ranks capped by `ranks` and/or set by a relative
    error `eps` per row (Oseledets: each step discards at most eps^2/(N-1) of the row's squared norm;
    the bond's rank is the largest any row needs)."""
    count, dtype = rows.shape[0], rows.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # float32 weights: float32 Grams suffice
    work = rows.reshape(count, -1).to(compute)
    tiny = torch.finfo(compute).tiny
    limits = max_ranks(shape)
    caps = list(ranks) if ranks is not None else limits
    allowed = None if eps is None else (eps**2 / max(1, len(shape) - 1)) * (work.double()**2).sum(-1)
    cores, kept, discarded, left = [], [], torch.zeros(count, dtype=torch.float64, device=rows.device), 1
    rest = work
    for k, n in enumerate(shape[:-1]):
        unfold = rest.reshape(count, left * n, -1)
        rows_side = unfold.shape[1] <= unfold.shape[2]
        gram = unfold @ unfold.mT if rows_side else unfold.mT @ unfold
        energy, vectors = batched_eigh(gram)  # ascending
        energy = energy.clamp_min(0)
        rank = min(caps[k], limits[k], energy.shape[-1])
        if allowed is not None:  # keeping j discards the smallest m - j: cumsum[m - j - 1]
            needed = (energy.cumsum(-1) > allowed[:, None]).sum(-1).max().item()
            rank = max(1, min(rank, needed))
        top = vectors[..., -rank:].flip(-1)  # largest first
        if rows_side:
            basis = top
        else:  # left vectors from right ones: U S = A V, columns normalised (zero where S is 0)
            basis = unfold @ top
            norms = basis.norm(dim=1, keepdim=True)
            basis = basis * torch.where(norms > tiny**0.5, 1 / norms.clamp_min(tiny), 0)
        discarded += energy[:, : energy.shape[-1] - rank].sum(-1).double()
        cores.append(basis.reshape(count, left, n, rank).to(dtype))
        rest = basis.mT @ unfold
        kept.append(rank)
        left = rank
    cores.append(rest.reshape(count, left, shape[-1], 1).to(dtype))
    return TTResult(cores, kept, discarded)


def tt_svd_rows(rows: torch.Tensor, shape: tuple[int, ...], ranks: list[int]) -> list[torch.Tensor]:
    """Batched TT-SVD: rows (V, prod(shape)) -> cores (V, r_{k-1}, n_k, r_k), ranks capped."""
    return tt_svd(rows, shape, ranks).cores


def contract(cores: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Rows (B, dim) from per-row cores (B, r_{k-1}, n_k, r_k), by batched matmuls left to right."""
    count = cores[0].shape[0]
    out = cores[0].reshape(count, -1, cores[0].shape[-1])
    for core in cores[1:]:
        out = torch.matmul(out, core.reshape(count, core.shape[1], -1)).reshape(count, -1, core.shape[-1])
    return out.reshape(count, -1)[:, :dim]


def empty_cores(count: int, shape: tuple[int, ...], ranks: list[int]) -> nn.ParameterList:
    full = [1, *ranks, 1]
    return nn.ParameterList(
        nn.Parameter(torch.zeros(count, full[k], n, full[k + 1]), requires_grad=False) for k, n in enumerate(shape)
    )


class TTEmbedding(Factorized):
    """Embedding whose rows are tensor trains; `forward` gathers and contracts only `ids`."""

    def __init__(self, num_embeddings: int, dim: int, shape: tuple[int, ...], ranks: list[int]):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.cores = empty_cores(num_embeddings, shape, ranks)
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


class TieredTTEmbedding(Factorized):
    """Per-token TT whose rows fall in tiers with their own ranks; `tier_of` (one byte per token)
    says which, and a row's place in its tier is its rank among the tier's token ids."""

    def __init__(self, num_embeddings: int, dim: int, shape: tuple[int, ...], tiers: list[dict]):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.tier_of = nn.Parameter(torch.zeros(num_embeddings, dtype=torch.uint8), requires_grad=False)
        self.tiers = nn.ModuleList(empty_cores(t["count"], shape, t["ranks"]) for t in tiers)
        self.record = {"method": "tt-tiered", "num_embeddings": num_embeddings, "dim": dim,
                       "tensor_shape": list(shape), "tiers": tiers}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        tier = self.tier_of[flat].long()
        out = torch.zeros(flat.shape[0], self.dim, dtype=self.tiers[0][0].dtype, device=flat.device)
        for t, cores in enumerate(self.tiers):
            member = self.tier_of.long() == t
            place = (member.long().cumsum(0) - 1)[flat].clamp(0, cores[0].shape[0] - 1)
            rows = contract([core[place] for core in cores], self.dim)
            out = torch.where((tier == t)[:, None], rows, out)
        return out.reshape(*ids.shape, self.dim)

    def dense_weight(self) -> torch.Tensor:
        """The tiers' tables stacked, then gathered into token order. Only constant-foldable ops (no
        boolean-mask writes), so ONNX Runtime builds a shared head's table once, at load time."""
        tier = self.tier_of.long()
        row = torch.zeros_like(tier)
        offset = 0
        for t, cores in enumerate(self.tiers):
            member = tier == t
            row = torch.where(member, member.long().cumsum(0) - 1 + offset, row)
            offset += cores[0].shape[0]
        return torch.cat([contract(list(cores), self.dim) for cores in self.tiers])[row]


def token_counts(ctx: Context, vocab: int) -> torch.Tensor:
    """How often each token occurs in the calibration texts (WikiText-2 valid by default; never a
    held-out text), each whole text given equal weight: counts scaled to the texts' mean length, so
    that one text gives its plain counts."""
    if "token_counts" not in ctx.cache:
        if ctx.tokenizer is None:
            raise TensoredgeError("by=freq needs calibration text, so a tokenizer: load the model with "
                                  "toolkit's load_model, or use by=norm")
        from toolkit.compress.context import valid_ids
        from toolkit.data import text_ids

        texts = [valid_ids(ctx.tokenizer) if name == "valid" else torch.tensor(text_ids(ctx.tokenizer, name))
                 for name in ctx.calibration]
        mean = sum(len(t) for t in texts) / len(texts)
        ctx.cache["token_counts"] = sum(torch.bincount(t, minlength=vocab)[:vocab].double() * (mean / len(t))
                                        for t in texts)
    return ctx.cache["token_counts"]


def tier_plan(shape: tuple[int, ...], dim: int, count: int, ratio: float, boost: float,
              top: float) -> tuple[list[int], list[int], int]:
    """(high ranks, low ranks, rows in the high tier) so that the table, with its byte per token of
    tier map, is `ratio` times smaller than dense float32. The high tier gets about `boost` times
    the average budget; at least a fraction `top` of rows are in it."""
    budget = dim / ratio - 0.25  # floats per row, less the tier map's byte
    lowest = [1] * (len(shape) - 1)
    if row_params(shape, lowest) >= budget:
        most = dim / (row_params(shape, lowest) + 0.25)
        if off_by(most, ratio) <= TOLERANCE:  # rank 1 everywhere is close enough: both tiers at it
            return lowest, lowest, 1
        raise TensoredgeError(f"ratio {ratio:g} leaves no room for two tiers in rows of shape {shape}, so the nearest "
                              f"it reaches is {most:.4g}x: lower the ratio, raise order= or use tiers=1")
    high = ranks_for_budget(shape, boost * budget)
    if row_params(shape, high) <= budget:
        high = ranks_above(shape, ranks_for_budget(shape, budget))
    p_high = row_params(shape, high)
    rest = (budget - min(top, 0.99) * p_high) / (1 - min(top, 0.99))
    low = ranks_for_budget(shape, max(rest, row_params(shape, lowest)))
    p_low = row_params(shape, low)
    high_rows = round(count * (budget - p_low) / (p_high - p_low))
    return high, low, min(max(high_rows, 1), count - 1)


class TensorTrainEmbedding:
    """`tt`: per-token TT. Parameters: ratio=R (compression of the table), rank=R (cap) or eps=E
    (relative error per row); shape=AxBxC or order=N; tiers=2 with by=freq|norm, boost=B, top=F
    (two rank settings, see `tier_plan`); head=shared|dense|lowrank (toolkit.compress.shared_head)."""

    name = "tt"
    params = ("ratio", "rank", "eps", "shape", "order", "tiers", "by", "boost", "top")
    kinds = ("embedding",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> Factorized:
        weight = module.weight.detach()
        count, dim = weight.shape
        shape = spec.params.get("shape") or tensor_shape(dim, int(spec.number("order") or 3))
        if not isinstance(shape, tuple) or math.prod(shape) < dim:
            raise TensoredgeError(f"shape {shape} in '{spec}' must multiply to at least {dim}, e.g. shape=8x8x12")
        ratio, rank, eps = spec.number("ratio"), spec.number("rank"), spec.number("eps")
        if sum(x is not None for x in (ratio, rank, eps)) != 1:
            raise TensoredgeError(f"'{spec}' needs exactly one of ratio=, rank= or eps=, e.g. tt:ratio=4")
        tiers = int(spec.number("tiers") or 1)
        if tiers not in (1, 2) or (tiers == 2 and ratio is None):
            raise TensoredgeError(f"tiers={tiers} in '{spec}': use tiers=1, or tiers=2 with ratio=")
        padded = torch.nn.functional.pad(weight, (0, math.prod(shape) - dim))
        if ratio is not None and ratio <= 1:
            raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
        if tiers == 2:
            return self.tiered(weight, padded, shape, spec, ctx)
        if eps is not None:
            if eps <= 0:
                raise TensoredgeError(f"eps {eps:g} in '{spec}' must be > 0, e.g. tt:eps=0.3")
            result = tt_svd(padded, shape, eps=eps)
        else:
            if ratio is not None:
                ranks = ranks_for_budget(shape, dim / ratio, what=f"rows of {dim}", dense=dim)
                achieved = dim / row_params(shape, ranks)
                if off_by(achieved, ratio) > MIX_ABOVE:
                    mixed = self.mixed(weight, padded, shape, ratio)
                    if mixed is not None:
                        return mixed
                    check_ratio(achieved, ratio, f"a table of {dim}-wide rows in TT shape {shape}",
                                [dim / row_params(shape, r) for r in (ranks, ranks_above(shape, ranks))
                                 if row_params(shape, r) < dim])
            else:
                ranks = [min(int(rank), lim) for lim in max_ranks(shape)]
            result = tt_svd(padded, shape, ranks)
        if row_params(shape, result.ranks) >= dim:
            raise TensoredgeError(
                f"'{spec}' keeps ranks {result.ranks}: {row_params(shape, result.ranks)} values per row, "
                f"not fewer than the dense {dim}: lower the rank or raise eps"
            )
        out = TTEmbedding(count, dim, shape, result.ranks)
        for param, core in zip(out.cores, result.cores):
            param.data.copy_(core)
        return out

    def mixed(self, weight: torch.Tensor, padded: torch.Tensor, shape: tuple[int, ...],
              ratio: float) -> TieredTTEmbedding | None:
        """`ratio` met with two adjacent rank settings where one steps too coarsely: the rows whose
        TT-SVD discards the most less at the higher setting take it (a byte per row says which).
        None when two settings cannot meet it within TOLERANCE either."""
        count, dim = weight.shape
        budget = dim / ratio - 0.25  # floats per row, less the tier map's byte
        try:
            low = ranks_for_budget(shape, budget)
            high = ranks_above(shape, low)
        except TensoredgeError:
            return None
        p_low, p_high = row_params(shape, low), row_params(shape, high)
        high_rows = rows_in_high(count, budget, p_low, p_high)
        achieved = dim / ((high_rows * p_high + (count - high_rows) * p_low) / count + 0.25)
        if not 0 < high_rows < count or p_high >= dim or off_by(achieved, ratio) > TOLERANCE:
            return None
        results = {"high": tt_svd(padded, shape, high), "low": tt_svd(padded, shape, low)}
        gain = results["low"].discarded - results["high"].discarded
        tier_of = torch.ones(count, dtype=torch.uint8)
        tier_of[gain.argsort(descending=True)[:high_rows]] = 0
        out = TieredTTEmbedding(count, dim, shape, [{"count": high_rows, "ranks": results["high"].ranks},
                                                    {"count": count - high_rows, "ranks": results["low"].ranks}])
        out.tier_of.data.copy_(tier_of)
        for t, name in enumerate(("high", "low")):
            member = tier_of == t
            for param, core in zip(out.tiers[t], results[name].cores):
                param.data.copy_(core[member])
        return out

    def tiered(self, weight: torch.Tensor, padded: torch.Tensor, shape: tuple[int, ...], spec: MethodSpec,
               ctx: Context | None) -> TieredTTEmbedding:
        count, dim = weight.shape
        by = spec.params.get("by", "freq")
        if by == "freq":
            if ctx is None:
                raise TensoredgeError("by=freq needs the compression context (calibration text): use by=norm")
            score = token_counts(ctx, count).double() + weight.norm(dim=-1).double() / (weight.norm(dim=-1).max() + 1)
        elif by == "norm":
            score = weight.norm(dim=-1).double()
        else:
            raise TensoredgeError(f"by={by} in '{spec}': choose by=freq or by=norm")
        ratio = spec.number("ratio")
        high, low, high_rows = tier_plan(shape, dim, count, ratio, spec.number("boost") or 2.0,
                                         spec.number("top") or 0.1)
        p_high, p_low = row_params(shape, high), row_params(shape, low)
        check_ratio(dim / ((high_rows * p_high + (count - high_rows) * p_low) / count + 0.25), ratio,
                    f"a {count}x{dim} table in two TT tiers of shape {shape}",
                    (dim / (p_low + 0.25), dim / (p_high + 0.25)))
        tier_of = torch.ones(count, dtype=torch.uint8)
        tier_of[score.argsort(descending=True)[:high_rows]] = 0
        out = TieredTTEmbedding(count, dim, shape, [{"count": high_rows, "ranks": high},
                                                    {"count": count - high_rows, "ranks": low}])
        out.tier_of.data.copy_(tier_of)
        for t, ranks in enumerate((high, low)):
            for param, core in zip(out.tiers[t], tt_svd(padded[tier_of == t], shape, ranks).cores):
                param.data.copy_(core)
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TTEmbedding:
        return TTEmbedding(record["num_embeddings"], record["dim"], tuple(record["tensor_shape"]), record["ranks"])


class TieredRebuild:
    """Rebuilds `tt` tables made with tiers=2 (their record's method is tt-tiered)."""

    name = "tt-tiered"
    params = ()
    kinds = ()

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None) -> Factorized:
        raise TensoredgeError("tt-tiered is written by tt:...,tiers=2; use that spec")

    def rebuild(self, record: dict, model: nn.Module) -> TieredTTEmbedding:
        return TieredTTEmbedding(record["num_embeddings"], record["dim"], tuple(record["tensor_shape"]),
                                 record["tiers"])


register(TensorTrainEmbedding())
register(TieredRebuild())
