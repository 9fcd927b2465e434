"""The parts both families share: inputs, the KV cache and its GroupQueryAttention, the graph's
contract (input_ids, attention_mask, past_key_values.* -> logits, present.*), as ONNX Runtime
GenAI's decoder models have it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporters.onnx_builder.graph import FLOAT, INT32, INT64, MS, Graph, onnx_type
from exporters.onnx_builder.weights import WeightFormat


@dataclass(frozen=True)
class Shape:
    """What the graph's interface needs to know of a config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_positions: int


class Decoder:
    """Graph inputs and outputs, and one GroupQueryAttention per layer over the shared KV cache.

    GroupQueryAttention takes its cache lengths from attention_mask: `seqlens_k` (tokens in the
    cache after this step, minus one) and `total_sequence_length`. When past_key_values.* and
    present.* are bound to the same max-length buffers (IO binding, or GenAI's
    past_present_share_buffer), each step writes only the new token's keys and values.
    """

    def __init__(self, g: Graph, shape: Shape, fmt: WeightFormat):
        self.g, self.shape, self.fmt = g, shape, fmt
        kv_type = onnx_type(fmt.dtype)
        self.ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
        self.mask = g.input("attention_mask", INT64, ["batch_size", "total_sequence_length"])
        kv = ["batch_size", shape.kv_heads, "past_sequence_length", shape.head_dim]
        present = ["batch_size", shape.kv_heads, "total_sequence_length", shape.head_dim]
        self.past = []
        for i in range(shape.layers):
            self.past.append((g.input(f"past_key_values.{i}.key", kv_type, kv),
                              g.input(f"past_key_values.{i}.value", kv_type, kv)))
        g.output("logits", FLOAT, ["batch_size", "sequence_length", shape.vocab])
        for i in range(shape.layers):
            g.output(f"present.{i}.key", kv_type, present)
            g.output(f"present.{i}.value", kv_type, present)
        tokens = g.one("ReduceSum", [self.mask, g.const([1])], "attn_mask/ReduceSum", keepdims=0)
        self.seqlens_k = g.one("Cast", [g.one("Sub", [tokens, g.const(1)], "attn_mask/Sub")], "attn_mask/seqlens_k",
                               to=INT32)
        total = g.one("Gather", [g.one("Shape", [self.mask], "attn_mask/Shape"), g.const(1)], "attn_mask/total")
        self.total = g.one("Cast", [total], "attn_mask/total_sequence_length", to=INT32)

    def positions(self) -> str:
        """Positions of the new tokens: total - sequence_length ... total - 1, per sequence (batch, seq)."""
        g = self.g
        seq = g.one("Gather", [g.one("Shape", [self.ids], "positions/ids_shape"), g.const(1)], "positions/seq")
        total = g.one("Gather", [g.one("Shape", [self.mask], "positions/mask_shape"), g.const(1)], "positions/total")
        start = g.one("Sub", [total, seq], "positions/start")
        row = g.one("Range", [start, total, g.const(1)], "positions/Range")
        return g.one("Unsqueeze", [row, g.const([0])], "positions/Unsqueeze")

    def attention(self, layer: int, q: str, k: str | None, v: str | None, rotary: tuple[str, str] | None,
                  scale: float | None = None) -> str:
        """GroupQueryAttention of layer `layer`; k and v None when q is packed QKV."""
        g, s = self.g, self.shape
        name = f"model.layers.{layer}.attn"
        past_k, past_v = self.past[layer]
        cos, sin = rotary or ("", "")
        out, _, _ = g.op("GroupQueryAttention",
                         [q, k or "", v or "", past_k, past_v, self.seqlens_k, self.total, cos, sin],
                         f"{name}/GroupQueryAttention", [f"{name}/output", f"present.{layer}.key",
                                                         f"present.{layer}.value"], domain=MS,
                         num_heads=s.heads, kv_num_heads=s.kv_heads, do_rotary=int(rotary is not None),
                         rotary_interleaved=0, scale=scale)
        return out

    def finish(self, logits: str) -> None:
        self.g.op("Identity", [logits], "logits/Identity", ["logits"])


def rms_norm(g: Graph, x: str, weight: np.ndarray, eps: float, name: str, fmt: WeightFormat) -> str:
    return g.one("SimplifiedLayerNormalization", [x, g.weight(f"{name}.weight", weight.astype(fmt.dtype))],
                 f"{name}/SimplifiedLayerNorm", epsilon=eps, axis=-1, stash_type=1)


def skip_rms_norm(g: Graph, x: str, residual: str, weight: np.ndarray, eps: float, name: str,
                  fmt: WeightFormat) -> tuple[str, str]:
    """(norm(x + residual), x + residual) in one SkipSimplifiedLayerNormalization."""
    out = g.op("SkipSimplifiedLayerNormalization", [x, residual, g.weight(f"{name}.weight", weight.astype(fmt.dtype))],
               f"{name}/SkipSimplifiedLayerNorm", 4, domain=MS, epsilon=eps)
    return out[0], out[3]


def layer_norm(g: Graph, x: str, weight: np.ndarray, bias: np.ndarray, eps: float, name: str,
               fmt: WeightFormat) -> str:
    return g.one("LayerNormalization", [x, g.weight(f"{name}.weight", weight.astype(fmt.dtype)),
                                        g.weight(f"{name}.bias", bias.astype(fmt.dtype))],
                 f"{name}/LayerNorm", epsilon=eps, axis=-1, stash_type=1)


def skip_layer_norm(g: Graph, x: str, residual: str, weight: np.ndarray, bias: np.ndarray, eps: float, name: str,
                    fmt: WeightFormat) -> tuple[str, str]:
    out = g.op("SkipLayerNormalization", [x, residual, g.weight(f"{name}.weight", weight.astype(fmt.dtype)),
                                          g.weight(f"{name}.bias", bias.astype(fmt.dtype))],
               f"{name}/SkipLayerNorm", 4, domain=MS, epsilon=eps)
    return out[0], out[3]
