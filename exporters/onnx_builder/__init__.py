"""The decoder graph written directly with ONNX Runtime's fused ops, one file per family (as ONNX
Runtime GenAI's model builder does), keeping every factor of a compressed model.

`build_decoder(model, family, fmt)` returns the ModelProto: GroupQueryAttention with the KV cache
(rotary inside for Llama), Skip(Simplified)LayerNormalization, MatMul or MatMulNBits for every
weight (a low-rank linear is two), GatherBlockQuantized reading the tied head's codes, and traced
subgraphs for the other factorized modules (subgraph.py).
"""

from __future__ import annotations

import onnx

from exporters.onnx_builder import gpt2, llama
from exporters.onnx_builder.graph import Graph
from exporters.onnx_builder.weights import FORMATS, WeightFormat

FAMILIES = {"llama": llama, "gpt2": gpt2}


def build_decoder(model, family: str, fmt: WeightFormat, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The whole decoder of `model` (a transformers GPT-2 or Llama, compressed or not) in `fmt`."""
    g = Graph(f"tensoredge-{family}-{fmt.name}")
    FAMILIES[family].build(g, model, fmt)
    return g.model(metadata or {})


def shape_of(model, family: str):
    return FAMILIES[family].shape_of(model.config)


__all__ = ["build_decoder", "shape_of", "WeightFormat", "FORMATS"]
