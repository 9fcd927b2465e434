"""Whole-model budgets: remove a fraction of ALL the model's parameters (embedding and head
included), split between the FC layers, the embedding and the LM head by measured sensitivity.

Every group offers options, each with the parameters it keeps (exact counts) and the KL(dense ||
model) measured with that group alone changed, on held-out WikiText-2 valid tokens
(toolkit.compress.sensitivity):
- every FC linear: dense, or a rank (the sensitivity options of toolkit.compress.budget);
- a tied embedding and head: the tied dense table; or the embedding compressed (each spec of the
  config at each ratio) with the head shared (logits from the new factors) or low-rank (a truncated
  SVD of the original table), when that keeps fewer parameters than the tied table;
- an untied model's embedding (dense or compressed) and head (dense or low-rank), apart.

All groups are chosen together under the budget (toolkit.compress.choose); the result says what
each target gave up and how many weight bytes a decoded token reads before and after.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from toolkit.compress.budget import DENSE, apply_ranks_, factorize_fc, fc_profile, layer_options
from toolkit.compress.choose import Options, choose
from toolkit.compress.context import Context
from toolkit.compress.registry import get_method
from toolkit.compress.sensitivity import Eta, Probe, SensitivityConfig, held_out_ids, swapped
from toolkit.compress.shared_head import SharedHead, head_costs
from toolkit.compress.spec import MethodSpec, parse_spec
from toolkit.compress.targets import BLOCKS, EMBEDDING, FINAL_NORM
from toolkit.counting import COMPONENTS, count_parameters, head_is_tied
from toolkit.errors import TensoredgeError

SCOPES = ("fc", "all")
PAIR = "embedding+head"  # the group of a tied embedding and head


@dataclass(frozen=True)
class WholeModelConfig:
    """The embedding and head options measured beside the FC layers: each embedding spec (without
    ratio=) at each ratio; low-rank heads at each head ratio."""

    embedding: tuple[str, ...] = ("tt:tiers=2,by=freq",)
    ratios: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0)
    head_ratios: tuple[float, ...] = (1.25, 1.5, 2.0)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)

    def __post_init__(self) -> None:
        if any(r <= 1 for r in (*self.ratios, *self.head_ratios)):
            raise TensoredgeError(f"embedding and head ratios must be > 1 (got {self.ratios}, {self.head_ratios})")
        for text in self.embedding:
            spec = parse_spec(text)
            get_method(spec.method, "embedding")
            if {"ratio", "rank", "eps", "head", "head_ratio"} & set(spec.params):
                raise TensoredgeError(f"embedding option '{text}' must not set ratio, rank, eps or head: "
                                      "the budget chooses them")


def json_config(config: WholeModelConfig) -> dict:
    data = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items() if k != "sensitivity"}


def module_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def with_params(text: str, **extra) -> str:
    spec = parse_spec(text)
    return str(MethodSpec(spec.method, {**spec.params, **extra}))


def head_module(model: nn.Module, ratio: float, head: nn.Module | None = None) -> nn.Module:
    """A truncated SVD of the model's (original) head, or of `head`, at `ratio`."""
    return get_method("svd", "linear").compress(head or model.lm_head, MethodSpec("svd", {"ratio": ratio}))


@torch.no_grad()  # not inference mode: the TT-SVD's eigh runs on worker threads, outside it
def measure_embedding_head(probe: Probe, ctx: Context, config: WholeModelConfig, progress=None) -> list[dict]:
    """Options of the embedding and head: {group, plan, params, kl} each (the dense ones included)."""
    model, path = ctx.model, EMBEDDING[ctx.family]
    device = probe.device
    embedding = copy.deepcopy(model.get_submodule(path)).cpu()  # options are built on the CPU, as compress_ builds
    head = copy.deepcopy(model.lm_head).cpu()
    dense = module_params(embedding)
    tied = head_is_tied(model)
    heads = {}
    for ratio in config.head_ratios:
        try:
            heads[ratio] = head_module(model, ratio, head).to(device)
        except TensoredgeError:
            pass  # a ratio this head cannot reach
    tables = {}
    for text in config.embedding:
        for ratio in config.ratios:
            spec = parse_spec(with_params(text, ratio=ratio))
            try:
                tables[str(spec)] = get_method(spec.method, "embedding").compress(embedding, spec, ctx).to(device)
            except TensoredgeError as exc:
                if progress:
                    progress(f"whole-model budget: {spec} left out ({exc})")
    if tied:
        out = [{"group": PAIR, "plan": {}, "params": dense, "kl": 0.0}]
        trials = [(spec, table, "shared", None) for spec, table in tables.items()]
        trials += [(spec, table, "lowrank", r) for spec, table in tables.items() for r in heads
                   if module_params(table) + module_params(heads[r]) < dense]
    else:
        out = [{"group": "embedding", "plan": {}, "params": dense, "kl": 0.0},
               {"group": "lm_head", "plan": {}, "params": module_params(model.lm_head), "kl": 0.0}]
        trials = [(spec, table, None, None) for spec, table in tables.items()]
        trials += [(None, None, "lowrank", r) for r in heads]
    eta = Eta(len(trials), "sensitivity: embedding and head option", progress)
    for spec, table, policy, ratio in trials:
        swap, plan = {}, {}
        if table is not None:
            swap[path] = table
            head_params = {"head": policy} | ({"head_ratio": ratio} if ratio else {})
            plan["embedding"] = with_params(spec, **head_params) if tied else spec
        if policy == "shared":
            swap["lm_head"] = SharedHead(table, path)
        elif policy == "lowrank":
            swap["lm_head"] = heads[ratio]
            if not tied:
                plan["head"] = f"svd:ratio={ratio:g}"
        params = module_params(table) + (module_params(heads[ratio]) if policy == "lowrank" else 0)
        with swapped(model, swap):
            kl = probe.kl("embedding" if table is not None else "head")
        group = PAIR if tied else ("embedding" if table is not None else "lm_head")
        out.append({"group": group, "plan": plan, "params": params, "kl": kl})
        eta.step()
    return out


def whole_profile(ctx: Context, method: str, facts: dict, config: WholeModelConfig, progress=None) -> dict:
    """FC layer curves (shared with the FC-only allocation) plus the embedding and head options."""
    key = f"whole:{method}"
    if key not in ctx.cache:
        layers = fc_profile(ctx, method, facts, config.sensitivity, progress)
        start = time.time()
        ids = held_out_ids(ctx.tokenizer, ctx.calibration_tokens, config.sensitivity.tokens)
        with Probe(ctx.model, ctx.family, ids, config.sensitivity, ctx.device) as probe:
            options = measure_embedding_head(probe, ctx, config, progress)
        ctx.cache[key] = {**layers, "embedding_head": options, "whole_config": json_config(config),
                          "seconds": layers["seconds"] + time.time() - start}
    return ctx.cache[key]


def allocate_whole(model: nn.Module, facts: dict, profile: dict, remove: float) -> dict:
    """{"ranks": per FC layer (0 = dense), "options": the chosen embedding/head option per group,
    "predicted_kl"} removing at least `remove` of all the model's parameters."""
    if not 0 < remove < 1:
        raise TensoredgeError(f"remove={remove:g} must be a fraction between 0 and 1, e.g. 0.2 for 20%")
    total = count_parameters(model)["total"]["params"]
    fc = layer_options(facts, "sensitivity", profile=profile)
    groups = {path: o for path, (o, _) in fc.items()}
    extra: dict[str, list[dict]] = {}
    for option in profile["embedding_head"]:
        extra.setdefault(option["group"], []).append(option)
    for group, options in extra.items():
        groups[group] = Options(torch.tensor([float(o["params"]) for o in options]),
                                torch.tensor([max(float(o["kl"]), 0.0) for o in options]))
    dense = sum(float(o.params.max()) for o in groups.values())
    fixed = total - dense  # norms, biases and anything no group holds
    budget = total * (1 - remove) - fixed
    lowest = sum(float(o.params.min()) for o in groups.values())
    if lowest > budget:
        raise TensoredgeError(f"removing {remove:.0%} of all parameters is beyond the measured options "
                              f"(at most {(total - fixed - lowest) / total:.1%} can go): remove less")
    chosen = choose(groups, budget)
    ranks = {path: int(fc[path][1][chosen[path]]) for path in fc}
    options = {group: extra[group][chosen[group]] for group in extra}
    return {"ranks": ranks, "options": options,
            "predicted_kl": sum(float(groups[g].cost[i]) for g, i in chosen.items())}


def apply_whole_(model: nn.Module, family: str, facts: dict, allocation: dict, tokenizer=None) -> dict:
    """Put the allocation into `model`; returns the plan entries of the embedding and head."""
    from toolkit.compress import compress_

    apply_ranks_(model, facts, allocation["ranks"])
    plan = {}
    for option in allocation["options"].values():
        plan |= option["plan"]
    if "embedding" in plan:
        compress_(model, family, {"embedding": plan["embedding"]}, tokenizer=tokenizer)
    if "head" in plan:
        model.set_submodule("lm_head", head_module(model, parse_spec(plan["head"]).number("ratio")))
    return plan


def bytes_read(model: nn.Module, family: str) -> dict:
    """Weight bytes a decoded token reads: the decoder blocks and final norm whole, the head as
    `head_costs` counts it (an embedding lookup reads one row: a few KiB, left out)."""
    stored = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    blocks = stored(model.get_submodule(BLOCKS[family])) + stored(model.get_submodule(FINAL_NORM[family]))
    head = head_costs(model, model.get_submodule(EMBEDDING[family]))["bytes_read"]
    return {"blocks": blocks, "head": head, "total": blocks + head}


def split(before: dict, after: dict) -> dict:
    """Parameters before, after and removed per component (count_parameters), summing to the total."""
    rows = {c: {"before": before[c]["params"], "after": after[c]["params"]} for c in (*COMPONENTS, "total")}
    return {c: r | {"removed": r["before"] - r["after"]} for c, r in rows.items()}


def compress_whole_(model: nn.Module, family: str, method: str, remove: float, tokenizer=None, progress=None,
                    device: str = "cpu", config: WholeModelConfig | None = None, ctx: Context | None = None) -> dict:
    """Compress `model` in place to remove `remove` of all its parameters (FC layers with `method`,
    the embedding and head with the config's options), split by measured sensitivity."""
    if not 0 < remove < 1:
        raise TensoredgeError(f"remove={remove:g} must be a fraction between 0 and 1, e.g. 0.2 for 20%")
    config = config or WholeModelConfig()
    ctx = ctx or Context(model, family, tokenizer, device=device)
    before, read_before = count_parameters(model), bytes_read(model, family)
    facts = factorize_fc(ctx, method, ("mlp", "attention"), progress)
    profile = whole_profile(ctx, method, facts, config, progress)
    allocation = allocate_whole(model, facts, profile, remove)
    plan = apply_whole_(model, family, facts, allocation, tokenizer)
    after = count_parameters(model)
    parts = split(before, after)
    return {"method": method, "allocation": "sensitivity", "scope": "all", "remove": remove,
            "removed_of_model": parts["total"]["removed"] / parts["total"]["before"],
            "removed_of_fc": (parts["mlp"]["removed"] + parts["attention"]["removed"])
                             / (parts["mlp"]["before"] + parts["attention"]["before"]),
            "split": parts, "plan": plan,
            "layers_dense": sum(r == DENSE for r in allocation["ranks"].values()), "layers": len(facts),
            "predicted_kl": allocation["predicted_kl"], "sensitivity_seconds": profile["seconds"],
            "bytes_read_per_token": {"before": read_before, "after": bytes_read(model, family)}}
