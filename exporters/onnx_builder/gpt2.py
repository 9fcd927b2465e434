"""GPT-2 family: LayerNorm, learned positions, packed QKV (Conv1D layout), GELU."""

from __future__ import annotations

from exporters.onnx_builder.decoder import Decoder, Shape, layer_norm, skip_layer_norm
from exporters.onnx_builder.graph import MS, Graph
from exporters.onnx_builder.modules import Vocabulary, array, emit_linear
from exporters.onnx_builder.weights import WeightFormat, gather_table

ACTIVATIONS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu": "Gelu"}


def shape_of(config) -> Shape:
    head_dim = config.n_embd // config.n_head
    return Shape(config.n_layer, config.n_head, config.n_head, head_dim, config.n_embd, config.vocab_size,
                 config.n_positions)


def build(g: Graph, model, fmt: WeightFormat) -> None:
    from toolkit.errors import TensoredgeError

    config = model.config
    activation = ACTIVATIONS.get(config.activation_function)
    if activation is None:
        raise TensoredgeError(f"GPT-2 activation '{config.activation_function}' has no fused ONNX op here: "
                              f"supported are {', '.join(ACTIVATIONS)}")
    if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
        raise TensoredgeError("GPT-2 variants with per-layer attention scaling are not supported by the ONNX builder")
    shape = shape_of(config)
    eps = config.layer_norm_epsilon
    decoder = Decoder(g, shape, fmt)
    vocab = Vocabulary(g, model, fmt, shape.hidden)
    positions = gather_table(g, array(model.transformer.wpe.weight), decoder.positions(), "model.wpe", fmt)
    h = g.one("Add", [vocab.embed(decoder.ids), positions], "model.embed/Add")
    residual = None
    for i, block in enumerate(model.transformer.h):
        name = f"model.layers.{i}"
        ln1 = (array(block.ln_1.weight), array(block.ln_1.bias), eps, f"{name}.ln_1", fmt)
        if residual is None:
            x, residual = layer_norm(g, h, *ln1), h
        else:
            x, residual = skip_layer_norm(g, h, residual, *ln1)
        qkv = emit_linear(g, x, block.attn.c_attn, f"{name}.attn.c_attn", fmt, shape.hidden)
        y = decoder.attention(i, qkv, None, None, None)
        h = emit_linear(g, y, block.attn.c_proj, f"{name}.attn.c_proj", fmt, shape.hidden)
        x, residual = skip_layer_norm(g, h, residual, array(block.ln_2.weight), array(block.ln_2.bias), eps,
                                      f"{name}.ln_2", fmt)
        inner = emit_linear(g, x, block.mlp.c_fc, f"{name}.mlp.c_fc", fmt, shape.hidden)
        inner = g.one(activation, [inner], f"{name}.mlp/{activation}", domain=MS)
        h = emit_linear(g, inner, block.mlp.c_proj, f"{name}.mlp.c_proj", fmt,
                        config.n_inner or 4 * shape.hidden)
    x, _ = skip_layer_norm(g, h, residual, array(model.transformer.ln_f.weight), array(model.transformer.ln_f.bias),
                           eps, "model.ln_f", fmt)
    decoder.finish(vocab.logits(x))
