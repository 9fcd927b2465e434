"""Parameter and byte counts by component; a tied LM head is counted once, under embedding."""

from __future__ import annotations

import torch.nn as nn

COMPONENTS = ("embedding", "lm_head", "attention", "mlp", "other")
_PATTERNS = (
    ("embedding", ("transformer.wte.", "model.embed_tokens.")),
    ("lm_head", ("lm_head.",)),
    ("attention", (".attn.", ".self_attn.")),
    ("mlp", (".mlp.",)),
)


def component_of(name: str) -> str:
    """Which component a parameter name belongs to."""
    for component, patterns in _PATTERNS:
        if any(p in name or name.startswith(p) for p in patterns):
            return component
    return "other"


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """{component: {"params", "bytes"}} plus "total"; shared (tied) tensors count once."""
    counts = {c: {"params": 0, "bytes": 0} for c in (*COMPONENTS, "total")}
    for name, param in model.named_parameters(remove_duplicate=True):
        for key in (component_of(name), "total"):
            counts[key]["params"] += param.numel()
            counts[key]["bytes"] += param.numel() * param.element_size()
    counts["lm_head"]["tied"] = int(head_is_tied(model))
    return counts


def head_is_tied(model: nn.Module) -> bool:
    """True when the LM head shares its weight (or factors) with the token embedding."""
    head = getattr(model, "lm_head", None)
    if getattr(head, "ties_to", None):
        return True
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    return head is not None and weight is not None and weight is getattr(head, "weight", None)
