"""Whole-model budgets for the FC layers (MLP + attention linears): remove a fraction of their
parameters, or stay within an allowed perplexity increase, with per-layer ranks allocated
uniformly (same ratio everywhere), surgically (by each layer's own output error) or by measured
end-to-end sensitivity.

"% removed" counts the targeted linears' parameters (weights and biases), as SVD-LLM's
compression ratio counts a model's linear weights; `summary` also gives it as % of the model.

Surgical allocation: every layer's `Factorization` already holds its calibration output error
at every rank (E||(W - W_r) x||^2 on WikiText-2 valid). Relative to the layer's output energy
this is its sensitivity curve; ranks (or leaving the layer dense) are chosen to minimise the sum
of relative errors under the parameter budget (toolkit.compress.choose).

Sensitivity allocation: each layer alone is truncated to a ladder of ranks and the KL of the whole
model to the dense one is measured on held-out WikiText-2 valid tokens (toolkit.compress.sensitivity);
between ladder ranks the curve is interpolated, and ranks (or dense) are chosen to minimise the
summed KL rise under the same budget.
"""

from __future__ import annotations

import copy
import math
import time

import numpy
import torch
import torch.nn as nn

from toolkit.compress.choose import Options, choose
from toolkit.compress.context import Context
from toolkit.compress.low_rank import Factorization
from toolkit.compress.registry import get_method
from toolkit.compress.sensitivity import (Eta, Probe, SensitivityConfig, check_profile, held_out_ids, measure_layers,
                                          profile, swapped)
from toolkit.compress.targets import find_targets
from toolkit.errors import TensoredgeError

ALLOCATIONS = ("uniform", "surgical", "sensitivity", "refined")
MEASURED = ("sensitivity", "refined")  # allocations that measure the model (toolkit.compress.sensitivity)
DENSE = 0  # rank 0 in an allocation: the layer stays dense


def fc_paths(model: nn.Module, family: str, targets: tuple[str, ...] = ("mlp", "attention")) -> list[str]:
    return [p for t in targets for p in find_targets(model, family, t)]


def uniform_ranks(facts: dict[str, Factorization], remove: float) -> dict[str, int]:
    """The same parameter ratio 1/(1 - remove) in every layer."""
    ranks = {}
    for path, fact in facts.items():
        budget = fact.dense_params() * (1 - remove) - (fact.out_features if fact.has_bias else 0)
        ranks[path] = int(budget // (fact.in_features + fact.out_features))
        if not 1 <= ranks[path] <= fact.max_rank():
            raise TensoredgeError(f"removing {remove:.0%} of {path} leaves rank {ranks[path]} "
                                  f"(1..{fact.max_rank()} reduce parameters): choose a removal in 0..1 that does")
    return ranks


OBJECTIVES = ("relative", "absolute")


def rank_params(fact: Factorization, ranks: torch.Tensor) -> torch.Tensor:
    """Parameters the layer keeps at each rank (0 = dense)."""
    low = ranks * (fact.in_features + fact.out_features) + (fact.out_features if fact.has_bias else 0)
    return torch.where(ranks == DENSE, torch.tensor(fact.dense_params()), low).double()


def surgical_options(fact: Factorization, objective: str) -> tuple[Options, torch.Tensor]:
    """Dense and every rank 1..max_rank, each costing its calibration output error."""
    ranks = torch.arange(0, fact.max_rank() + 1)
    error = torch.cat([torch.zeros(1, dtype=torch.float64), fact.error[1 : len(ranks)].double()])
    if objective == "relative":
        error = error / max(fact.energy, 1e-30)
    return Options(rank_params(fact, ranks), error), ranks


def sensitivity_options(fact: Factorization, curve: dict) -> tuple[Options, torch.Tensor]:
    """Dense (no KL rise, or the measured `dense` of a second pass) and every rank from the lowest
    measured one up to max_rank, its KL rise interpolated linearly between the measured ranks (made
    monotone: a lower rank never costs less, nor less than dense; above the highest measured rank,
    that rank's cost)."""
    dense = torch.zeros(1, dtype=torch.long)
    floor = float(curve.get("dense", 0.0))  # the cost of dense: 0, or a measured change (second pass)
    if not curve["ranks"]:
        return Options(rank_params(fact, dense), torch.full((1,), floor)), dense
    measured = sorted(zip(curve["ranks"], curve["kl"]))  # lowest rank first
    ranks = [r for r, _ in measured]
    cost = list(numpy.maximum.accumulate([max(kl, floor) for _, kl in measured][::-1])[::-1])
    every = numpy.arange(ranks[0], fact.max_rank() + 1)
    interpolated = torch.from_numpy(numpy.interp(every, ranks, cost))
    options = torch.cat([dense, torch.from_numpy(every)])
    cost = torch.cat([torch.full((1,), floor, dtype=torch.float64), interpolated])
    return Options(rank_params(fact, options), cost), options


def layer_options(facts: dict[str, Factorization], how: str, objective: str = "relative",
                  profile: dict | None = None) -> dict[str, tuple[Options, torch.Tensor]]:
    """Per layer: (options, the rank of each option) for a surgical or sensitivity allocation."""
    if how == "sensitivity":
        if profile is None:
            raise TensoredgeError("sensitivity allocation needs measured sensitivities "
                                  "(compress_budget_ measures them)")
        layers = check_profile(profile, facts)["layers"]
        return {path: sensitivity_options(fact, layers[path]) for path, fact in facts.items()}
    return {path: surgical_options(fact, objective) for path, fact in facts.items()}


def ranks_within(options: dict[str, tuple[Options, torch.Tensor]], budget: float) -> dict[str, int]:
    """The rank (0 = dense) of every layer, chosen within `budget` kept parameters."""
    chosen = choose({path: o for path, (o, _) in options.items()}, budget)
    return {path: int(options[path][1][i]) for path, i in chosen.items()}


def surgical_ranks(facts: dict[str, Factorization], remove: float, objective: str = "relative") -> dict[str, int]:
    """Ranks (0 = dense) minimising the sum of output errors within the parameter budget; each
    layer's error relative to its output energy ("relative"), or as is ("absolute")."""
    total = sum(f.dense_params() for f in facts.values())
    try:
        return ranks_within(layer_options(facts, "surgical", objective), total * (1 - remove))
    except TensoredgeError:
        raise TensoredgeError(f"removing {remove:.0%} of the FC parameters is impossible even at rank 1: "
                              "remove less") from None


def check_budget(method: str, remove: float | None, max_increase: float | None, how: str = "surgical") -> None:
    """The --fc budget's one-line refusals, checked before any model is loaded or calibrated."""
    chosen = get_method(method, "linear")
    if not hasattr(chosen, "factorizations"):
        raise TensoredgeError(f"method '{method}' has no per-rank factorization, so no budgeted allocation: "
                              "use svd, asvd, svd-llm or feature")
    if how not in ALLOCATIONS:
        raise TensoredgeError(f"allocation '{how}' unknown: choose one of {', '.join(ALLOCATIONS)}")
    if remove is not None and not (math.isfinite(remove) and 0 < remove < 1):
        raise TensoredgeError(f"--remove {remove:g} must be a fraction between 0 and 1, e.g. 0.2 for 20%")
    if max_increase is not None and not (math.isfinite(max_increase) and max_increase > 0):
        raise TensoredgeError(f"--max-ppl-increase {max_increase:g} must be positive, e.g. 0.4 for +40%")


def sensitivity_ranks(facts: dict[str, Factorization], remove: float, profile: dict) -> dict[str, int]:
    """Ranks (0 = dense) minimising the summed measured KL rise within the parameter budget."""
    options = layer_options(facts, "sensitivity", profile=profile)
    total = sum(f.dense_params() for f in facts.values())
    lowest = sum(float(o.params.min()) for o, _ in options.values())
    if lowest > total * (1 - remove):
        raise TensoredgeError(f"removing {remove:.0%} of the FC parameters needs ranks below the lowest measured "
                              f"(at most {1 - lowest / total:.1%} can go): remove less, or measure lower kept "
                              "fractions")
    return ranks_within(options, total * (1 - remove))


def check_allocation(remove: float, how: str, objective: str = "relative") -> None:
    """One-line errors for a bad allocation request, before any expensive work."""
    if how not in ALLOCATIONS:
        raise TensoredgeError(f"allocation '{how}' unknown: choose one of {', '.join(ALLOCATIONS)}")
    if objective not in OBJECTIVES:
        raise TensoredgeError(f"objective '{objective}' unknown: choose one of {', '.join(OBJECTIVES)}")
    if not 0 < remove < 1:
        raise TensoredgeError(f"remove={remove:g} must be a fraction between 0 and 1, e.g. 0.2 for 20%")


def allocate(facts: dict[str, Factorization], remove: float, how: str, objective: str = "relative",
             profile: dict | None = None) -> dict[str, int]:
    check_allocation(remove, how, objective)
    if how == "uniform":
        return uniform_ranks(facts, remove)
    if how == "sensitivity":
        return sensitivity_ranks(facts, remove, profile)
    if how == "refined":
        raise TensoredgeError("refined ranks measure the model again for each removal: use compress_budget_ "
                              "(or refined_ranks), not allocate")
    return surgical_ranks(facts, remove, objective)


def predicted_kl(profile: dict, facts: dict[str, Factorization], ranks: dict[str, int]) -> float:
    """The summed KL rise the sensitivity profile predicts for `ranks` (each layer measured alone;
    a layer cut below its lowest measured rank counts that rank's KL, so the sum is then a lower bound)."""
    total = 0.0
    for path, (options, option_ranks) in layer_options(facts, "sensitivity", profile=profile).items():
        rank = ranks[path]
        if rank != DENSE:
            rank = max(rank, int(option_ranks[1]))  # option_ranks: dense, then lowest measured .. max_rank
        total += float(options.cost[int(torch.nonzero(option_ranks == rank)[0])])
    return total


def apply_ranks_(model: nn.Module, facts: dict[str, Factorization], ranks: dict[str, int]) -> None:
    """Put each layer at its allocated rank into `model` (rank 0: left dense)."""
    for path, rank in ranks.items():
        if rank != DENSE:
            model.set_submodule(path, facts[path].module(rank))


def summary(model: nn.Module, facts: dict[str, Factorization], ranks: dict[str, int]) -> dict:
    """Parameters removed: of the targeted linears and of the whole model (after compression)."""
    dense = sum(f.dense_params() for f in facts.values())
    kept = sum(f.dense_params() if r == DENSE else f.params(r) for f, r in zip(facts.values(), ranks.values()))
    model_total = sum(p.numel() for p in model.parameters())  # the compressed model, shared once
    return {"fc_params_dense": dense, "fc_params_kept": kept, "removed_of_fc": 1 - kept / dense,
            "removed_of_model": (dense - kept) / (model_total + dense - kept),
            "layers_dense": sum(r == DENSE for r in ranks.values()), "layers": len(ranks)}


def factorize_fc(ctx: Context, method: str, targets: tuple[str, ...], progress=None) -> dict[str, Factorization]:
    """Factorizations of every targeted linear (calibration captured first, for every method's
    sensitivity curve)."""
    from toolkit.compress.activations import input_stats

    chosen = get_method(method, "linear")
    if not hasattr(chosen, "factorizations"):
        raise TensoredgeError(f"method '{method}' has no per-rank factorization, so no budgeted allocation: "
                              "use svd, asvd, svd-llm or feature")
    paths = fc_paths(ctx.model, ctx.family, targets)
    input_stats(ctx, paths, progress)
    return chosen.factorizations(paths, ctx, progress)


def fc_profile(ctx: Context, method: str, facts: dict[str, Factorization], config: SensitivityConfig | None = None,
               progress=None) -> dict:
    """The measured sensitivity profile of `facts` (once per context and method: later calls reuse it)."""
    key = f"sensitivity:{method}"
    if key not in ctx.cache:
        if ctx.tokenizer is None:
            raise TensoredgeError("sensitivity allocation measures on WikiText-2 valid, so it needs a tokenizer: "
                                  "load the model with toolkit's load_model")
        config = config or SensitivityConfig()
        ids = held_out_ids(ctx.tokenizer, ctx.calibration_tokens, config.tokens)
        start = time.time()
        with Probe(ctx.model, ctx.family, ids, config, ctx.device) as probe:
            layers = measure_layers(probe, facts, config, progress)
            tokens = probe.tokens
        ctx.cache[key] = profile(method, config, layers, time.time() - start, tokens)
    return ctx.cache[key]


def refined_ranks(ctx: Context, method: str, facts: dict[str, Factorization], remove: float,
                  config: SensitivityConfig | None = None, progress=None) -> tuple[dict[str, int], dict]:
    """`sensitivity` ranks, then a second pass in their context: with every layer at its first-pass
    rank, each layer is measured again at the ladder's ranks and dense (the rise or fall of KL
    from that point), and the ranks are chosen again from those curves. The second choice is kept
    only if the whole model's measured KL is lower. Returns (ranks, what both passes measured)."""
    config = config or SensitivityConfig()
    profile = fc_profile(ctx, method, facts, config, progress)
    first = sensitivity_ranks(facts, remove, profile)
    budget = sum(f.dense_params() for f in facts.values()) * (1 - remove)
    ids = held_out_ids(ctx.tokenizer, ctx.calibration_tokens, config.tokens)
    model = ctx.model
    start = time.time()
    with Probe(model, ctx.family, ids, config, ctx.device) as probe:
        dense = {path: model.get_submodule(path) for path in facts}
        def modules(ranks: dict[str, int]) -> dict[str, nn.Module]:
            return {p: facts[p].module(r).to(probe.device) for p, r in ranks.items() if r != DENSE}

        with swapped(model, modules(first)):
            probe.rebase()
            base = probe.kl(0)
            curves = measure_in_context(probe, facts, profile, first, dense, base, progress)
        second = ranks_within({p: sensitivity_options(f, curves[p]) for p, f in facts.items()}, budget)
        with swapped(model, modules(second)):
            measured = probe.kl(0)  # block 0's input is the embedding's output: no FC change touches it
    kept = "second" if measured < base else "first"
    return (second if kept == "second" else first), {
        "first_pass_kl": base, "second_pass_kl": measured, "kept_pass": kept, "refine_seconds": time.time() - start}


def measure_in_context(probe: Probe, facts: dict[str, Factorization], profile: dict, ranks: dict[str, int],
                       dense: dict, base: float, progress=None) -> dict[str, dict]:
    """Per layer, with the others at `ranks` (already in the probe's model): the change of KL when it
    alone moves to each measured rank of `profile`, and to dense."""
    plan = {p: sorted(set(profile["layers"][p]["ranks"]) - {ranks[p]}) for p in facts}
    count = sum(len(r) + (ranks[p] != DENSE) for p, r in plan.items())
    eta = Eta(count, "sensitivity, second pass: measurement", progress)
    curves = {}
    for path, fact in facts.items():
        start = probe.block_of(path)
        curve = {"ranks": [], "kl": [], "dense": 0.0}
        if ranks[path] != DENSE:
            curve["ranks"].append(ranks[path])
            curve["kl"].append(0.0)
            with swapped(probe.model, {path: dense[path]}):
                curve["dense"] = probe.kl(start) - base
            eta.step(f" (block {start})")
        for rank in plan[path]:
            with swapped(probe.model, {path: fact.module(rank).to(probe.device)}):
                curve["ranks"].append(rank)
                curve["kl"].append(probe.kl(start) - base)
            eta.step(f" (block {start})")
        curves[path] = curve
    return curves


def compress_budget_(model: nn.Module, family: str, method: str, remove: float, how: str = "surgical",
                     targets: tuple[str, ...] = ("mlp", "attention"), tokenizer=None, progress=None,
                     ctx: Context | None = None, device: str = "cpu",
                     sensitivity: SensitivityConfig | None = None) -> dict:
    """Compress the FC layers of `model` in place to remove `remove` of their parameters."""
    check_allocation(remove, how)
    ctx = ctx or Context(model, family, tokenizer, device=device)
    facts = factorize_fc(ctx, method, targets, progress)
    measured = fc_profile(ctx, method, facts, sensitivity, progress) if how in MEASURED else None
    passes = {}
    if how == "refined":
        ranks, passes = refined_ranks(ctx, method, facts, remove, sensitivity, progress)
    else:
        ranks = allocate(facts, remove, how, profile=measured)
    apply_ranks_(model, facts, ranks)
    out = {"method": method, "allocation": how, "remove": remove, **summary(model, facts, ranks), **passes}
    if measured is not None:
        out |= {"predicted_kl": predicted_kl(measured, facts, ranks), "sensitivity_seconds": measured["seconds"]}
    return out


@torch.inference_mode()
def calibration_nll(model: nn.Module, ids: torch.Tensor, length: int) -> float:
    """Mean next-token NLL over `ids` cut into sequences of `length`."""
    batches = ids[: len(ids) // length * length].reshape(-1, length)
    total = 0.0
    for batch in batches:
        total += float(model(batch[None], labels=batch[None]).loss)
    return total / len(batches)


def search_ids(valid: torch.Tensor, calibration_tokens: int, measured: dict | None, held_out: int) -> torch.Tensor:
    """The valid tokens a budget search judges removals on: after the calibration tokens, and after
    the tokens sensitivity was measured on (ranks chosen to spare those very tokens would judge
    themselves too kindly: +10% there was +25% on test)."""
    start = calibration_tokens + (measured["config"]["tokens"] if measured else 0)
    ids = valid[start : start + held_out]
    return ids if len(ids) >= 256 else valid[-held_out:]  # a short split: its tail (still valid, never test)


def compress_to_perplexity_(model: nn.Module, family: str, method: str, max_increase: float,
                            how: str = "surgical", targets: tuple[str, ...] = ("mlp", "attention"),
                            tokenizer=None, progress=None, steps: int = 6, held_out: int = 2048,
                            device: str = "cpu", sensitivity: SensitivityConfig | None = None,
                            ctx: Context | None = None) -> dict:
    """The largest removal (bisected, `steps` times) whose perplexity on held-out WikiText-2 *valid*
    tokens (after the calibration tokens and any sensitivity tokens) rises by at most `max_increase`
    (0.4 = +40%)."""
    if max_increase <= 0:
        raise TensoredgeError(f"allowed perplexity increase {max_increase:g} must be positive, e.g. 0.4 for +40%")
    check_allocation(0.5, how)
    if how == "refined":
        raise TensoredgeError("--max-ppl-increase searches many removals: use --alloc sensitivity, surgical or "
                              "uniform there (refined measures the model again for each)")
    from toolkit.compress.context import valid_ids

    ctx = ctx or Context(model, family, tokenizer, device=device)
    facts = factorize_fc(ctx, method, targets, progress)
    measured = fc_profile(ctx, method, facts, sensitivity, progress) if how == "sensitivity" else None
    ids = search_ids(valid_ids(tokenizer), ctx.calibration_tokens, measured, held_out)
    length = min(512, len(ids), model.config.max_position_embeddings)  # tiny models have short contexts
    base = math.exp(calibration_nll(model, ids, length))
    low, high, best = 0.0, 0.6, None
    for step in range(steps):
        mid = (low + high) / 2
        trial = copy.deepcopy(model)
        ranks = allocate(facts, mid, how, profile=measured)
        apply_ranks_(trial, facts, ranks)
        ppl = math.exp(calibration_nll(trial, ids, length))
        if progress:
            progress(f"budget search {step + 1}/{steps}: remove {mid:.1%} -> valid perplexity {ppl:.2f} "
                     f"(+{ppl / base - 1:.0%}, allowed +{max_increase:.0%})")
        if ppl <= base * (1 + max_increase):
            low, best = mid, (mid, ranks, ppl)
        else:
            high = mid
    if best is None:
        raise TensoredgeError(f"no removal within +{max_increase:.0%} valid perplexity was found: allow more")
    remove, ranks, ppl = best
    apply_ranks_(model, facts, ranks)
    return {"method": method, "allocation": how, "remove": remove, "max_ppl_increase": max_increase,
            "valid_perplexity_dense": base,
            "valid_perplexity": ppl, **summary(model, facts, ranks)}
