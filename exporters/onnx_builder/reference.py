"""The PyTorch model an int8/int4 export must compute: a copy whose quantized weights are replaced
by what MatMulNBits / GatherBlockQuantized hold (onnxruntime's own quantizer, dequantized)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from exporters.onnx_builder.weights import WeightFormat, dequantize_blocks, quantize_blocks
from toolkit.compress.low_rank import LowRankLinear
from toolkit.compress.svd_embedding import LowRankEmbedding
from toolkit.compress.svd_tiered import TieredLowRankEmbedding


def quantized_weights(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    """Every weight the builder stores block-quantized, with whether it is held transposed ((in, out)
    as GPT-2's Conv1D holds it, or LowRankEmbedding's `right`) relative to (out, in). Traced
    factorized modules (TT cores, TRAWL factors) stay float."""
    found, seen = [], set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            pairs = [(module.weight, False)]
        elif type(module).__name__ == "Conv1D":
            pairs = [(module.weight, True)]
        elif isinstance(module, LowRankEmbedding):
            pairs = [(module.left, False), (module.right, True)]
        else:
            continue
        if isinstance(module, nn.Linear) and _inside_traced(model, module):
            continue
        for param, transposed in pairs:
            if id(param) not in seen:
                seen.add(id(param))
                found.append((param, transposed))
    return found


def _inside_traced(model: nn.Module, linear: nn.Linear) -> bool:
    """A Linear that is part of a factorized module other than LowRankLinear (traced as a whole)."""
    from toolkit.compress.registry import Factorized

    for module in model.modules():
        if isinstance(module, Factorized) and not isinstance(module, (LowRankLinear, LowRankEmbedding,
                                                                      TieredLowRankEmbedding)):
            if any(sub is linear for sub in module.modules()):
                return True
    return False


@torch.no_grad()
def quantized_reference(model: nn.Module, fmt: WeightFormat) -> nn.Module:
    """A deep copy of `model` computing with the export's dequantized weights."""
    ref = copy.deepcopy(model)
    for param, transposed in quantized_weights(ref):
        weight = param.detach().float().numpy()
        weight = weight.T if transposed else weight
        codes, scales, zero_points = quantize_blocks(np.ascontiguousarray(weight), fmt.bits, fmt.block_size,
                                                     fmt.symmetric)
        fake = dequantize_blocks(codes, scales, fmt.bits, weight.shape[1], zero_points)
        param.copy_(torch.from_numpy(fake.T if transposed else fake))
    return ref
