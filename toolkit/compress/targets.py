"""Where the compressible layers of each family live, and how to read a linear's weight."""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.errors import TensoredgeError

EMBEDDING = {"gpt2": "transformer.wte", "llama": "model.embed_tokens"}
MLP = {
    "gpt2": ("transformer.h", ("mlp.c_fc", "mlp.c_proj")),
    "llama": ("model.layers", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
}
ATTENTION = {
    "gpt2": ("transformer.h", ("attn.c_attn", "attn.c_proj")),
    "llama": ("model.layers", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")),
}
BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}  # the decoder blocks, in order
FINAL_NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm"}  # between the last block and the head
TARGETS = ("embedding", "mlp", "attention")
KIND = {"embedding": "embedding", "mlp": "linear", "attention": "linear"}


def find_targets(model: nn.Module, family: str, target: str) -> list[str]:
    """Module paths of `target` ("embedding", "mlp" or "attention") in a model of `family`."""
    if target == "embedding":
        return [EMBEDDING[family]]
    if target in ("mlp", "attention"):
        blocks, names = (MLP if target == "mlp" else ATTENTION)[family]
        count = len(model.get_submodule(blocks))
        return [f"{blocks}.{i}.{name}" for i in range(count) for name in names]
    raise TensoredgeError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(weight as out x in, bias, layout) for nn.Linear and GPT-2's Conv1D (stored in x out)."""
    weight = module.weight.detach()
    if isinstance(module, nn.Linear):
        return weight, module.bias, "linear"
    if type(module).__name__ == "Conv1D":
        return weight.T, module.bias, "conv1d"
    raise TensoredgeError(f"cannot read a linear weight from {type(module).__name__}")
