"""Whole-model budgets for the FC layers (MLP + attention linears): remove a fraction of their
parameters, or stay within an allowed perplexity increase, with per-layer ranks allocated
uniformly (same ratio everywhere) or surgically (by measured sensitivity).

"% removed" counts the targeted linears' parameters (weights and biases), as SVD-LLM's
compression ratio counts a model's linear weights; `summary` also gives it as % of the model.

Surgical allocation: every layer's `Factorization` already holds its calibration output error
at every rank (E||(W - W_r) x||^2 on WikiText-2 valid). Relative to the layer's output energy
this is its sensitivity curve; ranks (or leaving the layer dense) are chosen to minimise the sum
of relative errors under the parameter budget, by a Lagrange multiplier found by bisection.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.low_rank import Factorization
from toolkit.compress.registry import get_method
from toolkit.compress.targets import find_targets
from toolkit.errors import TensoredgeError

ALLOCATIONS = ("uniform", "surgical")
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


def surgical_ranks(facts: dict[str, Factorization], remove: float, objective: str = "relative") -> dict[str, int]:
    """Ranks (0 = dense) minimising the sum of output errors within the parameter budget; each
    layer's error relative to its output energy ("relative"), or as is ("absolute")."""
    total = sum(f.dense_params() for f in facts.values())
    budget = total * (1 - remove)
    options = {}  # path -> (params per option, relative error per option); option 0 is dense
    for path, fact in facts.items():
        top = fact.max_rank()
        ranks = torch.arange(1, top + 1)
        params = torch.cat([torch.tensor([float(fact.dense_params())]),
                            (ranks * (fact.in_features + fact.out_features) + (fact.out_features if fact.has_bias else 0)).double()])
        error = torch.cat([torch.zeros(1, dtype=torch.float64), fact.error[1 : top + 1].double()])
        if objective == "relative":
            error = error / max(fact.energy, 1e-30)
        options[path] = (params, error)

    def choose(lam: float) -> tuple[dict[str, int], float]:
        chosen, used = {}, 0.0
        for path, (params, error) in options.items():
            best = int(torch.argmin(error + lam * params / total))
            chosen[path], used = best, used + float(params[best])
        return chosen, used

    smallest = sum(float(p[1:].min()) if len(p) > 1 else float(p[0]) for p, _ in options.values())
    if smallest > budget:
        raise TensoredgeError(f"removing {remove:.0%} of the FC parameters is impossible even at rank 1: remove less")
    low, high = 0.0, 1.0
    while choose(high)[1] > budget:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if choose(mid)[1] > budget else (low, mid)
    return choose(high)[0]


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


def allocate(facts: dict[str, Factorization], remove: float, how: str, objective: str = "relative") -> dict[str, int]:
    if how not in ALLOCATIONS:
        raise TensoredgeError(f"allocation '{how}' unknown: choose one of {', '.join(ALLOCATIONS)}")
    if objective not in OBJECTIVES:
        raise TensoredgeError(f"objective '{objective}' unknown: choose one of {', '.join(OBJECTIVES)}")
    if not 0 < remove < 1:
        raise TensoredgeError(f"remove={remove:g} must be a fraction between 0 and 1, e.g. 0.2 for 20%")
    return uniform_ranks(facts, remove) if how == "uniform" else surgical_ranks(facts, remove, objective)


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


def compress_budget_(model: nn.Module, family: str, method: str, remove: float, how: str = "surgical",
                     targets: tuple[str, ...] = ("mlp", "attention"), tokenizer=None, progress=None,
                     ctx: Context | None = None, device: str = "cpu") -> dict:
    """Compress the FC layers of `model` in place to remove `remove` of their parameters."""
    ctx = ctx or Context(model, family, tokenizer, device=device)
    facts = factorize_fc(ctx, method, targets, progress)
    ranks = allocate(facts, remove, how)
    apply_ranks_(model, facts, ranks)
    return {"method": method, "allocation": how, "remove": remove, **summary(model, facts, ranks)}


@torch.inference_mode()
def calibration_nll(model: nn.Module, ids: torch.Tensor, length: int) -> float:
    """Mean next-token NLL over `ids` cut into sequences of `length`."""
    batches = ids[: len(ids) // length * length].reshape(-1, length)
    total = 0.0
    for batch in batches:
        total += float(model(batch[None], labels=batch[None]).loss)
    return total / len(batches)


def compress_to_perplexity_(model: nn.Module, family: str, method: str, max_increase: float,
                            how: str = "surgical", targets: tuple[str, ...] = ("mlp", "attention"),
                            tokenizer=None, progress=None, steps: int = 6, held_out: int = 2048,
                            device: str = "cpu") -> dict:
    """The largest removal (bisected, `steps` times) whose perplexity on held-out WikiText-2 *valid*
    tokens (after the calibration tokens) rises by at most `max_increase` (0.4 = +40%)."""
    if max_increase <= 0:
        raise TensoredgeError(f"allowed perplexity increase {max_increase:g} must be positive, e.g. 0.4 for +40%")
    from toolkit.compress.context import valid_ids

    ctx = Context(model, family, tokenizer, device=device)
    facts = factorize_fc(ctx, method, targets, progress)
    valid = valid_ids(tokenizer)
    ids = valid[ctx.calibration_tokens : ctx.calibration_tokens + held_out]
    if len(ids) < 256:
        ids = valid[-held_out:]  # a short split: fall back to its tail (still valid, never test)
    length = min(512, len(ids))
    base = math.exp(calibration_nll(model, ids, length))
    low, high, best = 0.0, 0.6, None
    for step in range(steps):
        mid = (low + high) / 2
        trial = copy.deepcopy(model)
        ranks = allocate(facts, mid, how)
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
    return {"method": method, "allocation": how, "remove": remove, "valid_perplexity_dense": base,
            "valid_perplexity": ppl, **summary(model, facts, ranks)}
