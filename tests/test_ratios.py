"""Ratios that hold: over a grid of dimensions and ratios, every `ratio=R` spec (per-token TT, tiered
TT, TT-matrix, table SVD, SVD linears one by one and as a target, TT linears one by one and as a
target) is met within 5%, or refused in one line naming the nearest ratios it reaches, which are
then really more than 5% away."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from toolkit.compress import Context, compress_
from toolkit.compress.ratio import TOLERANCE
from toolkit.compress.registry import METHODS
from toolkit.compress.spec import parse_spec
from toolkit.errors import TensoredgeError

DIMS = (48, 64, 100, 576, 768)
RATIOS = (1.5, 2, 3, 4, 5, 8, 10, 20)


def stored(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def within_or_refused(target: float, build) -> str:
    """'met' when `build()` returns an achieved ratio within TOLERANCE; 'refused' when it raises a
    one-line error whose nearest reachable ratios are all more than TOLERANCE away."""
    try:
        achieved = build()
    except TensoredgeError as exc:
        text = str(exc)
        assert "\n" not in text and "nearest it reaches" in text, text
        nearest = [float(x) for x in re.findall(r"([\d.]+)x", text.split("nearest it reaches")[1])]
        assert nearest and all(abs(r / target - 1) > TOLERANCE * 0.99 for r in nearest), text
        return "refused"
    assert abs(achieved / target - 1) <= TOLERANCE, (target, achieved)
    return "met"


def table(rows: int, dim: int) -> nn.Embedding:
    torch.manual_seed(dim)
    return nn.Embedding.from_pretrained(torch.randn(rows, dim))


@pytest.mark.parametrize("spec", ["tt:ratio={r}", "tt:ratio={r},tiers=2,by=norm", "ttm:ratio={r}",
                                  "svd-table:ratio={r}"])
def test_embedding_ratios_hold_over_a_grid(spec):
    outcomes = {}
    for dim in DIMS:
        embedding = table(300, dim)
        for ratio in RATIOS:
            def build():
                module = METHODS[spec.split(":")[0]].compress(embedding, parse_spec(spec.format(r=ratio)))
                return stored(embedding) / stored(module)
            outcomes[dim, ratio] = within_or_refused(ratio, build)
    met = [k for k, v in outcomes.items() if v == "met"]
    assert len(met) >= 0.6 * len(outcomes), outcomes  # refusals only where ranks truly cannot reach
    if spec.startswith("tt:ratio={r}") and "tiers" not in spec:
        assert outcomes[576, 4] == "met"  # was 4.68x with one rank setting


def test_one_rank_setting_that_steps_too_far_becomes_two():
    embedding = table(1000, 576)
    module = METHODS["tt"].compress(embedding, parse_spec("tt:ratio=4"))
    assert module.record["method"] == "tt-tiered"  # rows of two rank settings, not 4.68x
    assert stored(embedding) / stored(module) == pytest.approx(4, rel=0.01)
    ids = torch.tensor([[0, 5, 999]])
    torch.testing.assert_close(module(ids), module.dense_weight()[ids])
    exact = METHODS["tt"].compress(embedding, parse_spec("tt:ratio=2"))  # one setting within 2%: kept simple
    assert exact.record["method"] == "tt"


def linear(out: int, inp: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(out * 7 + inp)
    return nn.Linear(inp, out, bias=bias)


@pytest.mark.parametrize("method", ["svd", "tt-linear"])
def test_single_linear_ratios_hold_over_a_grid(method):
    outcomes = {}
    for dim in DIMS:
        layer = linear(dim, 2 * dim, bias=method == "svd")
        for ratio in RATIOS:
            def build():
                module = METHODS[method].compress(layer, parse_spec(f"{method}:ratio={ratio}"))
                if method == "tt-linear":  # the ratio of the weight (the bias is kept as is)
                    return layer.weight.numel() / sum(core.numel() for core in module.cores)
                return sum(p.numel() for p in layer.parameters()) / sum(p.numel() for p in module.parameters())
            outcomes[dim, ratio] = within_or_refused(ratio, build)
    assert sum(v == "met" for v in outcomes.values()) >= 0.5 * len(outcomes), outcomes


class Stack(nn.Module):
    """Layers of several shapes, as one target: blocks.N.proj."""

    def __init__(self, dims: list[tuple[int, int]]):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"proj": linear(o, i)}) for o, i in dims)


@pytest.mark.parametrize("method", ["svd", "tt-linear"])
@pytest.mark.parametrize("dim", [16, 48, 100])
def test_a_target_meets_its_ratio_by_mixing_ranks_across_layers(method, dim):
    model = Stack([(dim, dim), (dim, 2 * dim), (2 * dim, dim), (dim, dim)] * 2)
    paths = [f"blocks.{i}.proj" for i in range(len(model.blocks))]
    dense = sum(model.get_submodule(p).weight.numel() + (0 if method == "tt-linear" else model.get_submodule(p).bias.numel())
                for p in paths)
    for ratio in (1.5, 3, 5, 8):
        def build():
            out = METHODS[method].compress_group(paths, parse_spec(f"{method}:ratio={ratio}"), Context(model, "gpt2"))
            if method == "tt-linear":
                return dense / sum(core.numel() for m in out.values() for core in m.cores)
            return dense / sum(p.numel() for m in out.values() for p in m.parameters())
        within_or_refused(ratio, build)
    # where one layer alone is refused, the target of eight still meets it
    single = within_or_refused(5, lambda: sum(p.numel() for p in linear(dim, dim).parameters()) / sum(
        p.numel() for p in METHODS[method].compress(linear(dim, dim), parse_spec(f"{method}:ratio=5")).parameters()))
    group = within_or_refused(5, lambda: dense / sum(
        (sum(c.numel() for c in m.cores) if method == "tt-linear" else sum(p.numel() for p in m.parameters()))
        for m in METHODS[method].compress_group(paths, parse_spec(f"{method}:ratio=5"), Context(model, "gpt2")).values()))
    assert group == "met" or single == "refused"


def test_the_issue_case_through_compress(tiny_gpt2):
    """tt:ratio=4 on real 64-wide GPT-2 rows and svd:ratio=1.25 on its MLP, through compress_."""
    before = {n: stored(tiny_gpt2.model.get_submodule(n)) for n in ("transformer.wte",)}
    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:ratio=4,head=dense", "mlp": "svd:ratio=1.25"})
    achieved = before["transformer.wte"] / stored(tiny_gpt2.model.get_submodule("transformer.wte"))
    assert achieved == pytest.approx(4, rel=TOLERANCE)
