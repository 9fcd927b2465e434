"""`trawl`: the same linear of every layer stacked into one (layers x out x in) tensor and
decomposed (TRAWL, Luo et al. 2024): CP with tensorly, Tucker by HOOI (toolkit.compress.tucker).

- mode=shared: the factors are kept. Out- and in-factors (and the Tucker core) are one set of
  parameters shared by all layers; each layer owns only its row of the layer factor. Shared
  tensors are counted and saved once and tied again on reload.
- mode=reconstruct: the paper's denoising mode. Each layer gets back a dense weight rebuilt from
  the low-rank tensor; nothing is saved in parameters (0% removed), only the weights change.
"""

from __future__ import annotations

import copy
import math
import re

import psutil
import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.registry import Factorized, register
from toolkit.compress.spec import MethodSpec
from toolkit.compress.targets import linear_weight
from toolkit.compress.tucker import tucker
from toolkit.errors import TensoredgeError

DECOMPOSITIONS = ("tucker", "cp")
MODES = ("shared", "reconstruct")


class TrawlFactors(nn.Module):
    """The factors all layers of one group share: out (out x R_o), in (in x R_i), Tucker core."""

    def __init__(self, decomp: str, shape: tuple[int, int, int], ranks: tuple[int, int, int]):
        super().__init__()
        _layers, out_features, in_features = shape
        r_layer, r_out, r_in = ranks
        self.out_factor = nn.Parameter(torch.zeros(out_features, r_out), requires_grad=False)
        self.in_factor = nn.Parameter(torch.zeros(in_features, r_in), requires_grad=False)
        self.core = nn.Parameter(torch.zeros(r_layer, r_out, r_in), requires_grad=False) if decomp == "tucker" else None


class TrawlLinear(Factorized):
    """One layer of a TRAWL group: y = out_factor @ C_l @ in_factor^T x + bias, with C_l the core
    mixed by this layer's row (Tucker) or diag(row) (CP)."""

    def __init__(self, record: dict, factors: TrawlFactors):
        super().__init__()
        self.factors = factors  # the same module object in every layer of the group
        self.mix = nn.Parameter(torch.zeros(record["ranks"][0]), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(record["shape"][1]), requires_grad=False) if record["bias"] else None
        self.record = record

    def mixed_core(self) -> torch.Tensor:
        if self.factors.core is None:
            return torch.diag(self.mix)
        return torch.einsum("k,koi->oi", self.mix, self.factors.core)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.factors.in_factor
        h = h @ self.mixed_core().T
        y = h @ self.factors.out_factor.T
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        weight = self.factors.out_factor @ self.mixed_core() @ self.factors.in_factor.T
        return weight.T if self.record["layout"] == "conv1d" else weight

    def dense_bias(self) -> torch.Tensor | None:
        return self.bias


def factored_params(decomp: str, shape: tuple[int, int, int], ranks: tuple[int, int, int]) -> int:
    layers, out_features, in_features = shape
    r_layer, r_out, r_in = ranks
    core = r_layer * r_out * r_in if decomp == "tucker" else 0
    return out_features * r_out + in_features * r_in + core + layers * r_layer


def ranks_for(decomp: str, shape: tuple[int, int, int], spec: MethodSpec) -> tuple[int, int, int]:
    """Tucker: every mode keeps the same fraction of its size; CP: one rank R. From ratio= or rank=."""
    ratio, rank = spec.number("ratio"), spec.number("rank")
    if (ratio is None) == (rank is None):
        raise TensoredgeError(f"'{spec}' needs exactly one of ratio= or rank=, e.g. trawl:ratio=1.5")
    if ratio is not None and ratio <= 1:
        raise TensoredgeError(f"ratio {ratio:g} in '{spec}' would not reduce parameters: use a ratio > 1")
    if decomp == "cp":
        if rank is not None:
            return (int(rank),) * 3
        r = int(math.prod(shape) / ratio // (sum(shape)))
        return (r, r, r)
    if rank is not None:
        return tuple(min(int(rank), n) for n in shape)
    budget = math.prod(shape) / ratio
    low, high = 0.0, 1.0
    for _ in range(50):  # largest common fraction whose ranks fit the budget
        mid = (low + high) / 2
        if factored_params(decomp, shape, tuple(max(1, int(mid * n)) for n in shape)) <= budget:
            low = mid
        else:
            high = mid
    return tuple(max(1, int(low * n)) for n in shape)


def cp_workspace_bytes(shape: tuple[int, ...], rank: int) -> int:
    """Bytes of the largest Khatri-Rao product tensorly's CP-ALS forms in float64: the product of
    every mode but the smallest, times the rank (78.9 GB for SmolLM2's 30 x 1536 x 576 MLP stack at
    10% removed, rank 11,152: the allocation that failed in the FC grid)."""
    return math.prod(shape) // min(shape) * rank * 8


def check_cp_fits(name: str, shape: tuple[int, ...], rank: int, available: int) -> None:
    """Refuse a CP rank whose ALS workspace would not fit in memory, before any decomposition."""
    need = cp_workspace_bytes(shape, rank)
    if need > available:
        raise TensoredgeError(
            f"trawl decomp=cp at rank {rank} on the stacked {name} weights {list(shape)} needs a "
            f"{need / 1e9:.1f} GB workspace and {available / 1e9:.1f} GB is free: CP suits high ratios; "
            "use decomp=tucker, a higher ratio or a lower rank")


def groups_of(paths: list[str]) -> dict[str, list[str]]:
    """Paths grouped by the linear's name within its block (e.g. all `mlp.c_fc`), layer order kept."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        match = re.match(r"(.*?)\.(\d+)\.(.+)$", path)
        if match is None:
            raise TensoredgeError(f"trawl stacks layers, but '{path}' is not inside a numbered block")
        groups.setdefault(match.group(3), []).append(path)
    return groups


def decompose(tensor: torch.Tensor, decomp: str, ranks: tuple[int, int, int]):
    """(CP weights or Tucker core, [layer, out, in factors]): CP from tensorly (PyTorch backend: a
    measured 25x faster than its NumPy backend on this machine); Tucker by toolkit.compress.tucker,
    tensorly's algorithm with Gram eigendecompositions for its SVDs (5x faster, same factors)."""
    if decomp == "tucker":
        return tucker(tensor, list(ranks), n_iter_max=10, tol=1e-7)
    import warnings

    import tensorly
    from tensorly.decomposition import parafac

    with tensorly.backend_context("pytorch"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD")  # ranks capped by the unfolding
        cp = parafac(tensor, rank=ranks[0], init="svd", n_iter_max=30, tol=1e-7, random_state=0)
        return cp.weights, cp.factors


class Trawl:
    """`trawl`: decomp=tucker|cp, mode=shared|reconstruct, ratio=R or rank=R (the layer stack's
    compression, or the rank of every mode, capped at its size)."""

    name = "trawl"
    params = ("decomp", "mode", "ratio", "rank")
    kinds = ("linear",)

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context | None = None):
        raise TensoredgeError("trawl works across layers: use it through compress_ (a plan target)")

    def compress_group(self, paths: list[str], spec: MethodSpec, ctx: Context) -> dict[str, nn.Module]:
        decomp, mode = str(spec.params.get("decomp", "tucker")), str(spec.params.get("mode", "shared"))
        if decomp not in DECOMPOSITIONS or mode not in MODES:
            raise TensoredgeError(f"'{spec}': decomp is one of {', '.join(DECOMPOSITIONS)}, "
                                  f"mode one of {', '.join(MODES)}")
        groups = groups_of(paths)
        planned = {}
        for name, members in groups.items():  # every group's ranks checked before any decomposition
            modules = [ctx.model.get_submodule(p) for p in members]
            weights = [linear_weight(m) for m in modules]
            shape = (len(members), *weights[0][0].shape)
            ranks = ranks_for(decomp, shape, spec)
            if mode == "shared" and factored_params(decomp, shape, ranks) >= math.prod(shape):
                raise TensoredgeError(
                    f"trawl ranks {list(ranks)} for the {len(members)} stacked {name} weights hold "
                    f"{factored_params(decomp, shape, ranks)} values, not fewer than the dense {math.prod(shape)}: "
                    "lower the rank or raise the ratio")
            if decomp == "cp":
                check_cp_fits(name, shape, ranks[0], psutil.virtual_memory().available)
            planned[name] = (members, modules, weights, ranks)
        out = {}
        for name, (members, modules, weights, ranks) in planned.items():
            tensor = torch.stack([w for w, _, _ in weights]).double()
            shape = tuple(tensor.shape)
            core, (layer_f, out_f, in_f) = decompose(tensor, decomp, ranks)
            if decomp == "cp":
                layer_f = layer_f * core  # fold the CP weights into the layer rows
            if mode == "reconstruct":
                for path, module, (_, _, layout) in zip(members, modules, weights):
                    index = members.index(path)
                    mixed = torch.diag(layer_f[index]) if decomp == "cp" else torch.einsum("k,koi->oi", layer_f[index], core)
                    dense = (out_f @ mixed @ in_f.T).float()
                    rebuilt = copy.deepcopy(module)
                    rebuilt.weight.data.copy_(dense.T if layout == "conv1d" else dense)
                    out[path] = rebuilt
                continue
            used = (layer_f.shape[1], out_f.shape[1], in_f.shape[1])
            factors = TrawlFactors(decomp, shape, used)
            factors.out_factor.data.copy_(out_f)
            factors.in_factor.data.copy_(in_f)
            if decomp == "tucker":
                factors.core.data.copy_(core)
            for index, (path, (_, bias, layout)) in enumerate(zip(members, weights)):
                record = {"method": "trawl", "decomp": decomp, "shape": list(shape), "ranks": list(used),
                          "bias": bias is not None, "layout": layout, "owner": members[0], "layer": index}
                layer = TrawlLinear(record, factors)
                layer.mix.data.copy_(layer_f[index])
                if bias is not None:
                    layer.bias.data.copy_(bias)
                out[path] = layer
        return out

    def rebuild(self, record: dict, model: nn.Module) -> TrawlLinear:
        if record["layer"] == 0:
            factors = TrawlFactors(record["decomp"], tuple(record["shape"]), tuple(record["ranks"]))
        else:
            owner = model.get_submodule(record["owner"])
            if not isinstance(owner, TrawlLinear):
                raise TensoredgeError(f"manifest lists a trawl layer before its group's first ({record['owner']}): "
                                      "re-save the model")
            factors = owner.factors
        return TrawlLinear(record, factors)


register(Trawl())
