"""The graph of each module kind a (compressed) model can hold: dense and low-rank linears are
written by hand, as MatMul / MatMulNBits; every other factorized module is traced (subgraph.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from exporters.onnx_builder.graph import FLOAT, Graph, onnx_type
from exporters.onnx_builder.subgraph import splice
from exporters.onnx_builder.weights import (Quantized, WeightFormat, add_quantized, gather_quantized, gather_table,
                                            linear, matmul_nbits)
from toolkit.compress.low_rank import LowRankLinear
from toolkit.compress.svd_embedding import LowRankEmbedding
from toolkit.errors import TensoredgeError


def array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy()


def is_dense_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def dense_weight(module: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
    """(out, in) weight and bias of nn.Linear or GPT-2's Conv1D (stored in x out)."""
    weight = array(module.weight)
    return (weight if isinstance(module, nn.Linear) else weight.T), array(module.bias)


def emit_linear(g: Graph, x: str, module: nn.Module, name: str, fmt: WeightFormat, width: int) -> str:
    """y = module(x) for a linear of any kind; `width` is x's last dimension (for traced modules)."""
    if is_dense_linear(module):
        return linear(g, x, *dense_weight(module), name, fmt)
    if isinstance(module, LowRankLinear):  # a factorized linear is two MatMul(NBits): no dense product
        h = linear(g, x, array(module.down.weight), None, f"{name}.down", fmt)
        return linear(g, h, array(module.up.weight), array(module.up.bias), f"{name}.up", fmt)
    if type(module).__name__ == "TTLoRA":
        raise TensoredgeError(f"{name} carries a TT-LoRA adapter: fold it in first (tensoredge adapter merge) "
                              "or heal with --train all")
    return traced(g, x, module, torch.zeros(1, 2, width), name, fmt)


def emit_linears(g: Graph, x: str, modules: list[nn.Module], names: list[str], fmt: WeightFormat,
                 width: int) -> list[str]:
    """y_i = modules[i](x) for linears reading the same x. The first matmul of each dense or low-rank
    one (a dense weight, or a low-rank `down`) goes into one MatMul(NBits) over their stacked rows, cut
    by a Split; then each low-rank `up` follows. Exact: quantization blocks run along the input, so
    stacking rows changes no code or scale. Saves MatMulNBits launches (q/k/v, gate/up)."""
    if len(modules) < 2 or not all(is_dense_linear(m) or isinstance(m, LowRankLinear) for m in modules):
        return [emit_linear(g, x, m, n, fmt, width) for m, n in zip(modules, names)]
    firsts = [dense_weight(m) if is_dense_linear(m) else (array(m.down.weight), None) for m in modules]
    sizes = [w.shape[0] for w, _ in firsts]
    bias = None if all(b is None for _, b in firsts) else np.concatenate(
        [b if b is not None else np.zeros(w.shape[0], np.float32) for w, b in firsts])
    stacked_name = names[0].rsplit(".", 1)[0] + "." + "_".join(n.rsplit(".", 1)[1] for n in names) + ".first"
    stacked = linear(g, x, np.concatenate([w for w, _ in firsts]), bias, stacked_name, fmt)
    parts = g.op("Split", [stacked, g.const(sizes)], f"{stacked_name}/Split", len(modules), axis=-1)
    return [part if is_dense_linear(m) else linear(g, part, array(m.up.weight), array(m.up.bias), f"{n}.up", fmt)
            for part, m, n in zip(parts, modules, names)]


def traced(g: Graph, x: str, module: nn.Module, example: torch.Tensor, name: str, fmt: WeightFormat) -> str:
    """`module` traced on its own; fp16 graphs cast its float input and output around it."""
    if fmt.dtype == np.float16 and example.is_floating_point():
        x = g.one("Cast", [x], f"{name}/to_fp32", to=FLOAT)
    y = splice(g, x, module, example, name)
    if fmt.dtype == np.float16:
        y = g.one("Cast", [y], f"{name}/to_fp16", to=onnx_type(np.float16))
    return y


def tied_table(model: nn.Module) -> np.ndarray | None:
    """The embedding table when the LM head reads the very same dense weight, else None."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(embedding, nn.Embedding) and isinstance(head, nn.Linear) and head.weight is embedding.weight:
        return array(embedding.weight)
    return None


class Vocabulary:
    """Token embedding in, logits out; a tied dense table is stored once for both."""

    def __init__(self, g: Graph, model: nn.Module, fmt: WeightFormat, hidden: int):
        self.g, self.model, self.fmt, self.hidden = g, model, fmt, hidden
        table = tied_table(model)
        self.tied: str | Quantized | None = None
        if table is not None:
            self.tied = add_quantized(g, "lm_head", table, fmt) if fmt.bits else \
                g.weight("model.embed_tokens.weight", table.astype(fmt.dtype))

    def embed(self, ids: str) -> str:
        g, fmt, module = self.g, self.fmt, self.model.get_input_embeddings()
        name = "model.embed_tokens"
        if isinstance(self.tied, Quantized):
            return gather_quantized(g, self.tied, ids, name, fmt)
        if isinstance(self.tied, str):
            return g.one("Gather", [self.tied, ids], f"{name}/Gather")
        if isinstance(module, nn.Embedding):
            return gather_table(g, array(module.weight), ids, name, fmt)
        if isinstance(module, LowRankEmbedding):  # rows of left, times right: both kept
            rows = gather_table(g, array(module.left), ids, f"{name}.left", fmt)
            return linear(g, rows, array(module.right).T, None, f"{name}.right", fmt)
        return traced(g, ids, module, torch.zeros(1, 2, dtype=torch.int64), name, fmt)

    def logits(self, hidden: str) -> str:
        g, fmt = self.g, self.fmt
        if isinstance(self.tied, Quantized):
            y = matmul_nbits(g, hidden, self.tied, "lm_head/MatMulNBits", fmt)
        elif isinstance(self.tied, str):  # (V, H) read transposed, not stored twice
            y = g.one("Gemm", [g.one("Reshape", [hidden, g.const([-1, self.hidden])], "lm_head/flatten"), self.tied],
                      "lm_head/Gemm", transB=1)
            shape = g.one("Concat", [g.one("Slice", [g.one("Shape", [hidden], "lm_head/shape"), g.const([0]),
                                                    g.const([-1])], "lm_head/batch_seq"), g.const([-1])],
                          "lm_head/out_shape", axis=0)
            y = g.one("Reshape", [y, shape], "lm_head/unflatten")
        else:
            y = emit_linear(g, hidden, self.model.get_output_embeddings(), "lm_head", fmt, self.hidden)
        return y if fmt.dtype == np.float32 else g.one("Cast", [y], "logits/to_fp32", to=FLOAT)
