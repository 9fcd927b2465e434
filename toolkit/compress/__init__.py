"""Compression: `compress_(model, plan)` swaps layers for factorized modules in place.

A plan maps targets ("embedding", "mlp", "attention") to method specs ("tt:ratio=4", "svd:ratio=1.5").
Each method is one file registered in `registry.METHODS`.
"""

from __future__ import annotations

import torch.nn as nn

from toolkit.compress import (asvd, feature_space, low_rank, shared_head, svd_embedding,  # noqa: F401 - registers
                              svd_llm, svd_tiered, trawl, tt_embedding, tt_linear, tt_matrix)
from toolkit.compress.context import Context
from toolkit.compress.registry import METHODS, Factorized, get_method
from toolkit.compress.shared_head import HEAD_PARAMS, HEAD_POLICIES, SharedHead
from toolkit.compress.spec import MethodSpec, parse_spec
from toolkit.compress.targets import KIND, TARGETS, find_targets
from toolkit.counting import head_is_tied
from toolkit.errors import TensoredgeError

Plan = dict[str, str]


def compress_(model: nn.Module, family: str, plan: Plan, tokenizer=None, progress=None,
              device: str = "cpu", calibration: tuple[str, ...] = ("valid",)) -> None:
    """Replace every layer named by `plan` with its factorized form, in place.

    `tokenizer` is needed by methods that read calibration text (`calibration`: WikiText-2 valid
    and/or books, in equal shares); `device` is where that calibration pass runs.
    """
    specs = check_plan(plan)
    ctx = Context(model, family, tokenizer, device=device, calibration=calibration)
    for target, spec in specs.items():
        method = get_method(spec.method, KIND[target])
        paths = find_targets(model, family, target)
        already = [p for p in paths if isinstance(model.get_submodule(p), Factorized)]
        if already:
            raise TensoredgeError(f"{target} layers are already compressed "
                                  f"({model.get_submodule(already[0]).record['method']}): compress the original model")
        tied = target == "embedding" and head_is_tied(model)
        if hasattr(method, "compress_group"):
            for path, module in method.compress_group(paths, spec, ctx).items():
                model.set_submodule(path, module)
        else:
            for path in paths:
                model.set_submodule(path, method.compress(model.get_submodule(path), spec, ctx))
        if tied:
            head_ratio = spec.number("head_ratio") or spec.number("ratio") or 2.0
            tie_head_(model, paths[0], str(spec.params.get("head", "shared")), head_ratio)
        if progress:
            progress(f"{target}: {len(paths)} layer(s) compressed with {spec}")


def check_plan(plan: Plan) -> dict[str, MethodSpec]:
    """Parse and check every spec of `plan` (targets, methods, parameters, numbers) without touching
    a model, so a bad plan fails before anything is loaded or computed. Returns the specs."""
    specs = {}
    for target, text in plan.items():
        if target not in KIND:
            raise TensoredgeError(f"unknown target '{target}': plans map {', '.join(TARGETS)} to method specs")
        spec = specs[target] = parse_spec(text)
        method = get_method(spec.method, KIND[target])
        unknown = set(spec.params) - set(method.params) - (set(HEAD_PARAMS) if target == "embedding" else set())
        if unknown:
            raise TensoredgeError(f"'{spec}' has unknown parameter(s) {', '.join(sorted(unknown))}: "
                                  f"{spec.method} takes {', '.join(method.params)}")
        if str(spec.params.get("head", "shared")) not in HEAD_POLICIES:
            raise TensoredgeError(f"head={spec.params['head']} in '{spec}' is not a head policy: "
                                  f"choose one of {', '.join(HEAD_POLICIES)}")
        for key, value in spec.params.items():
            if isinstance(value, (int, float)):
                spec.number(key)  # finite; whole numbers for ranks and orders
        if (spec.number("ratio") or 2.0) <= 1:
            raise TensoredgeError(f"ratio {spec.number('ratio'):g} in '{spec}' would not reduce parameters: "
                                  "use a ratio > 1")
    return specs


def tie_head_(model: nn.Module, embedding_path: str, policy: str, head_ratio: float = 2.0) -> None:
    """Give a formerly tied LM head its `policy`: share the new factors, keep the dense table, or
    take a truncated SVD of the original table `head_ratio` times smaller."""
    if policy not in HEAD_POLICIES:
        raise TensoredgeError(f"head={policy} is not a head policy: choose one of {', '.join(HEAD_POLICIES)}")
    model.config.tie_word_embeddings = False  # the tie is now ours to keep, not transformers'
    if policy == "shared":
        model.set_submodule("lm_head", SharedHead(model.get_submodule(embedding_path), embedding_path))
    if policy == "lowrank":
        spec = MethodSpec("svd", {"ratio": head_ratio})
        model.set_submodule("lm_head", get_method("svd", "linear").compress(model.get_submodule("lm_head"), spec))
    # "dense": lm_head still holds the original table's Parameter, now its own.


def factorized_modules(model: nn.Module) -> dict[str, Factorized]:
    """Every compressed module of `model` by path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, Factorized)}


def rebuild_(model: nn.Module, records: dict[str, dict]) -> None:
    """Put empty factorized modules with the recorded shapes at their paths (for reloading)."""
    for path, record in records.items():
        model.set_submodule(path, METHODS[record["method"]].rebuild(record, model))


__all__ = ["compress_", "check_plan", "rebuild_", "factorized_modules", "parse_spec", "Context", "MethodSpec", "Plan", "TARGETS"]
