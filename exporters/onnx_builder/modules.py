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
from toolkit.compress.shared_head import SharedHead
from toolkit.compress.svd_embedding import LowRankEmbedding
from toolkit.compress.svd_tiered import TieredLowRankEmbedding
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
            self.tied = stored_once(g, "lm_head", table, fmt)
        self.tiers = None
        embedding = model.get_input_embeddings()
        if isinstance(embedding, TieredLowRankEmbedding):
            self.tiers = TieredTable(g, embedding, fmt)

    def embed(self, ids: str) -> str:
        g, fmt, module = self.g, self.fmt, self.model.get_input_embeddings()
        name = "model.embed_tokens"
        if isinstance(self.tied, Quantized):
            return gather_quantized(g, self.tied, ids, name, fmt)
        if isinstance(self.tied, str):
            return g.one("Gather", [self.tied, ids], f"{name}/Gather")
        if self.tiers is not None:
            return self.tiers.rows(ids, name)
        if isinstance(module, nn.Embedding):
            return gather_table(g, array(module.weight), ids, name, fmt)
        if isinstance(module, LowRankEmbedding):  # rows of left, times right: both kept
            rows = gather_table(g, array(module.left), ids, f"{name}.left", fmt)
            return linear(g, rows, array(module.right).T, None, f"{name}.right", fmt)
        return traced(g, ids, module, torch.zeros(1, 2, dtype=torch.int64), name, fmt)

    def logits(self, hidden: str) -> str:
        g, fmt = self.g, self.fmt
        head = self.model.get_output_embeddings()
        if self.tied is not None:
            y = times_transposed(g, hidden, self.tied, self.hidden, "lm_head", fmt)
        elif self.tiers is not None and isinstance(head, SharedHead) and head.embedding is self.tiers.module:
            y = self.tiers.logits(hidden, self.hidden)
        else:
            y = emit_linear(g, hidden, head, "lm_head", fmt, self.hidden)
        return y if fmt.dtype == np.float32 else g.one("Cast", [y], "logits/to_fp32", to=FLOAT)


def stored_once(g: Graph, name: str, weight: np.ndarray, fmt: WeightFormat) -> str | Quantized:
    """An (N, K) weight that both a gather (its rows) and a matmul (x W^T) read: block-quantized for
    MatMulNBits and GatherBlockQuantized alike, or one float initializer."""
    return add_quantized(g, name, weight, fmt) if fmt.bits else g.weight(f"{name}.weight", weight.astype(fmt.dtype))


def times_transposed(g: Graph, x: str, weight: str | Quantized, width: int, name: str, fmt: WeightFormat) -> str:
    """x W^T for a weight stored once by `stored_once` (a float one read transposed by Gemm)."""
    if isinstance(weight, Quantized):
        return matmul_nbits(g, x, weight, f"{name}/MatMulNBits", fmt)
    y = g.one("Gemm", [g.one("Reshape", [x, g.const([-1, width])], f"{name}/flatten"), weight], f"{name}/Gemm", transB=1)
    shape = g.one("Concat", [g.one("Slice", [g.one("Shape", [x], f"{name}/shape"), g.const([0]), g.const([-1])],
                                   f"{name}/batch_seq"), g.const([-1])], f"{name}/out_shape", axis=0)
    return g.one("Reshape", [y, shape], f"{name}/unflatten")


def gather_rows(g: Graph, weight: str | Quantized, ids: str, name: str, fmt: WeightFormat) -> str:
    return gather_quantized(g, weight, ids, name, fmt) if isinstance(weight, Quantized) else \
        g.one("Gather", [weight, ids], f"{name}/Gather")


def extra_elements(model: nn.Module, fmt: WeightFormat) -> int:
    """Weight elements the graph holds beyond the model's parameters: a tiered table's slot map, and
    in quantized formats the float copy of each tier's `right` that its rows use."""
    extra = 0
    for module in model.modules():
        if isinstance(module, TieredLowRankEmbedding):
            extra += module.slot.numel() + (sum(m.weight.numel() for m in module.right) if fmt.bits else 0)
    return extra


class TieredTable:
    """svd-tiered in the graph: each tier's matrices stored once and read by both the token rows
    (GatherBlockQuantized / Gather) and the shared head (MatMulNBits / Gemm); the concatenated tier
    logits are gathered back into token order by the slot map. The rows' own `right` product uses
    the very values the head's quantized `right` holds (dequantized), as the PyTorch reference does."""

    def __init__(self, g: Graph, module: TieredLowRankEmbedding, fmt: WeightFormat):
        from exporters.onnx_builder.weights import dequantize_blocks, quantize_blocks

        self.g, self.module, self.fmt = g, module, fmt
        name = "model.embed_tokens"
        self.slot = g.weight(f"{name}.slot", module.slot.numpy().astype(np.int32))
        self.exact = stored_once(g, f"{name}.exact", array(module.exact.weight), fmt)
        self.left = [stored_once(g, f"{name}.tier{t}.left", array(m.weight), fmt) for t, m in enumerate(module.left)]
        self.right = [stored_once(g, f"{name}.tier{t}.right", array(m.weight), fmt) for t, m in enumerate(module.right)]
        self.right_rows = self.right  # (r, d), read as rows @ right; quantized, a float copy of its values
        if fmt.bits:
            self.right_rows = []
            for t, m in enumerate(module.right):
                weight = array(m.weight)
                codes, scales, zero_points = quantize_blocks(weight, fmt.bits, fmt.block_size, fmt.symmetric)
                weight = dequantize_blocks(codes, scales, fmt.bits, weight.shape[1], zero_points)
                self.right_rows.append(g.weight(f"{name}.tier{t}.right_rows", weight.astype(fmt.dtype)))

    def rows(self, ids: str, name: str) -> str:
        g, module = self.g, self.module
        row = g.one("Gather", [self.slot, ids], f"{name}/slot")
        last = g.const([module.exact.out_features - 1], np.int32)
        out = gather_rows(g, self.exact, g.one("Min", [row, last], f"{name}/exact_row"), f"{name}.exact", self.fmt)
        for t, start in enumerate(module.starts):
            count = module.left[t].out_features
            place = g.one("Sub", [row, g.const([start], np.int32)], f"{name}.tier{t}/offset")
            place = g.one("Min", [g.one("Max", [place, g.const([0], np.int32)], f"{name}.tier{t}/floor"),
                                  g.const([count - 1], np.int32)], f"{name}.tier{t}/place")
            low = gather_rows(g, self.left[t], place, f"{name}.tier{t}.left", self.fmt)
            rows = g.one("MatMul", [low, self.right_rows[t]], f"{name}.tier{t}/rows")
            inside = g.one("Unsqueeze", [g.one("GreaterOrEqual", [row, g.const([start], np.int32)],
                                               f"{name}.tier{t}/inside"), g.const([-1])], f"{name}.tier{t}/inside_col")
            out = g.one("Where", [inside, rows, out], f"{name}.tier{t}/Where")
        return out

    def logits(self, hidden: str, width: int) -> str:
        g, fmt = self.g, self.fmt
        parts = [times_transposed(g, hidden, self.exact, width, "lm_head.exact", fmt)]
        for t, (left, right) in enumerate(zip(self.left, self.right)):
            low = times_transposed(g, hidden, right, width, f"lm_head.tier{t}.right", fmt)
            parts.append(times_transposed(g, low, left, self.module.right[t].out_features, f"lm_head.tier{t}.left", fmt))
        tiers = g.one("Concat", parts, "lm_head/tiers", axis=-1)
        return g.one("Gather", [tiers, self.slot], "lm_head/token_order", axis=-1)
