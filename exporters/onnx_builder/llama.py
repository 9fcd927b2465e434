"""Llama family (SmolLM2): RMSNorm, RoPE inside GroupQueryAttention, grouped KV heads, SiLU gate."""

from __future__ import annotations

import numpy as np
from exporters.onnx_builder.decoder import Decoder, Shape, rms_norm, skip_rms_norm
from exporters.onnx_builder.graph import FLOAT, Graph, onnx_type
from exporters.onnx_builder.modules import Vocabulary, array, dense_weight, emit_linear, emit_linears, is_dense_linear
from exporters.onnx_builder.weights import WeightFormat, linear


def shape_of(config) -> Shape:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(config.num_hidden_layers, heads, config.num_key_value_heads or heads, head_dim,
                 config.hidden_size, config.vocab_size, config.max_position_embeddings)


def rotary_caches(g: Graph, model, shape: Shape, fmt: WeightFormat) -> tuple[str, str]:
    """cos and sin (max_positions, head_dim / 2) for GroupQueryAttention's fused rotary, computed in
    the graph from the model's own inverse frequencies and scaling (any rope scaling included), so
    the file holds head_dim / 2 numbers instead of two tables; ONNX Runtime folds them at load."""
    rotary = model.model.rotary_emb
    inv_freq = array(rotary.inv_freq).reshape(1, -1)
    positions = g.one("Cast", [g.one("Range", [g.const(0), g.const(shape.max_positions), g.const(1)],
                                     "rotary/Range")], "rotary/positions", to=FLOAT)
    column = g.one("Unsqueeze", [positions, g.const([1])], "rotary/column")
    freqs = g.one("MatMul", [column, g.weight("rotary.inv_freq", inv_freq)], "rotary/freqs")
    scaling = g.const(float(getattr(rotary, "attention_scaling", 1.0)), np.float32)
    caches = []
    for fn in ("Cos", "Sin"):
        table = g.one("Mul", [g.one(fn, [freqs], f"rotary/{fn}"), scaling], f"rotary/{fn.lower()}_scaled")
        if fmt.dtype != np.float32:
            table = g.one("Cast", [table], f"rotary/{fn.lower()}_cast", to=onnx_type(fmt.dtype))
        caches.append(table)
    return caches[0], caches[1]


def packed(g: Graph, x: str, modules: list, name: str, fmt: WeightFormat) -> str | None:
    """One MatMul over the rows of several dense linears reading the same input (exact: quantization
    blocks run along the input), or None when any of them is factorized."""
    if not all(is_dense_linear(m) for m in modules):
        return None
    weights, biases = zip(*(dense_weight(m) for m in modules))
    bias = None if all(b is None for b in biases) else np.concatenate(
        [b if b is not None else np.zeros(w.shape[0], np.float32) for w, b in zip(weights, biases)])
    return linear(g, x, np.concatenate(weights), bias, name, fmt)


def build(g: Graph, model, fmt: WeightFormat) -> None:
    config = model.config
    shape = shape_of(config)
    eps = config.rms_norm_eps
    decoder = Decoder(g, shape, fmt)
    vocab = Vocabulary(g, model, fmt, shape.hidden)
    rotary = rotary_caches(g, model, shape, fmt)
    h, residual = vocab.embed(decoder.ids), None
    q_width = shape.heads * shape.head_dim
    for i, layer in enumerate(model.model.layers):
        name = f"model.layers.{i}"
        attn, mlp = layer.self_attn, layer.mlp
        norm_weight = array(layer.input_layernorm.weight)
        if residual is None:
            x, residual = rms_norm(g, h, norm_weight, eps, f"{name}.input_layernorm", fmt), h
        else:
            x, residual = skip_rms_norm(g, h, residual, norm_weight, eps, f"{name}.input_layernorm", fmt)
        qkv = packed(g, x, [attn.q_proj, attn.k_proj, attn.v_proj], f"{name}.attn.qkv_proj", fmt)
        if qkv is not None:
            y = decoder.attention(i, qkv, None, None, rotary)
        else:
            q, k, v = emit_linears(g, x, [attn.q_proj, attn.k_proj, attn.v_proj],
                                   [f"{name}.attn.{p}_proj" for p in "qkv"], fmt, shape.hidden)
            y = decoder.attention(i, q, k, v, rotary)
        h = emit_linear(g, y, attn.o_proj, f"{name}.attn.o_proj", fmt, q_width)
        x, residual = skip_rms_norm(g, h, residual, array(layer.post_attention_layernorm.weight), eps,
                                    f"{name}.post_attention_layernorm", fmt)
        h = swiglu(g, x, mlp, name, fmt, shape.hidden, config.intermediate_size)
    x, _ = skip_rms_norm(g, h, residual, array(model.model.norm.weight), eps, "model.norm", fmt)
    decoder.finish(vocab.logits(x))


def swiglu(g: Graph, x: str, mlp, name: str, fmt: WeightFormat, hidden: int, inner_width: int) -> str:
    """down(silu(gate(x)) * up(x)); gate and up in one MatMul when both are dense."""
    both = packed(g, x, [mlp.gate_proj, mlp.up_proj], f"{name}.mlp.gate_up_proj", fmt)
    if both is not None:
        gate, up = g.op("Split", [both, g.const([inner_width, inner_width])],
                        f"{name}.mlp/Split", 2, axis=-1)
    else:
        gate, up = emit_linears(g, x, [mlp.gate_proj, mlp.up_proj], [f"{name}.mlp.gate_proj", f"{name}.mlp.up_proj"],
                                fmt, hidden)
    silu = g.one("Mul", [gate, g.one("Sigmoid", [gate], f"{name}.mlp/Sigmoid")], f"{name}.mlp/silu")
    inner = g.one("Mul", [silu, up], f"{name}.mlp/gated")
    return emit_linear(g, inner, mlp.down_proj, f"{name}.mlp.down_proj", fmt, inner_width)
