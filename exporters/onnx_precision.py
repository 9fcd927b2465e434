"""Reduced-precision variants of a verified fp32 export: dynamic int8 and fp16."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import onnx

PRECISIONS = ("fp32", "int8", "fp16")
FILE_NAMES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}

# Stated agreement each variant must reach against PyTorch fp32 on random prompts before it is kept.
# relative_logit_error: ||onnx - torch|| / ||torch|| over all logits; top1_agreement: share of
# positions with the same argmax; cached_vs_full_relative: max |cached - full| / max |full| of the
# variant itself. fp16 rounds every weight and activation to 11 bits; int8 each weight to 8 bits.
LIMITS = {
    "int8": {"relative_logit_error": 0.10, "top1_agreement": 0.80, "cached_vs_full_relative": 0.05},
    "fp16": {"relative_logit_error": 0.01, "top1_agreement": 0.95, "cached_vs_full_relative": 0.01},
}


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization logs every node it skips; keep the console for our progress lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """int8 weights: every MatMul weight 8-bit per block of 32 (MatMulNBits), embedding tables per tensor.

    MatMulNBits (onnxruntime.quantization.matmul_nbits_quantizer, bits=8, symmetric,
    accuracy_level 4) stores each weight as int8 with a scale per 32 inputs and, at level 4,
    quantizes activations per block too, so an outlier channel only costs its own block. Every
    factor MatMul (both halves of a low-rank linear) is quantized, since fold_weight_transposes
    left its weight as a plain initializer. Gather tables (embeddings, TT cores are not Gathers)
    are then quantized per tensor by quantize_dynamic.

    Why not quantize_dynamic for the MatMuls too: its per-tensor activation scale failed the
    agreement gate on smollm2-135m (relative logit error 0.18, top-1 0.32 on random prompts;
    block-wise: 0.047 and 0.88), at about the same decode speed on GPT-2-124M shapes.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    from onnxruntime.quantization.onnx_model import ONNXModel

    blocks = dict(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    model = ONNXModel(onnx.load(str(fp32_path)))
    model.replace_gemm_with_matmul()  # GPT-2's Conv1D exports as Gemm, which MatMulNBits skips
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model.model, algo_config=DefaultWeightOnlyQuantConfig(**blocks), **blocks)
        quantizer.process()
        weights_only = out_path.with_suffix(".matmul.onnx")
        quantizer.model.save_model_to_file(str(weights_only))
        quantize_dynamic(weights_only, out_path, op_types_to_quantize=["Gather"], weight_type=QuantType.QUInt8)
        weights_only.unlink()


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """fp16 weights and compute; inputs, outputs and the KV cache interface stay as exported.

    keep_io_types keeps logits float32; the KV cache tensors are fp16 (half the cache memory).
    The converter rewrites initializers but not the tensors of Constant nodes, while it marks
    their outputs fp16 (onnxruntime then refused the graph: "Expand ... does not match expected
    type"); so Constant nodes are turned into initializers first.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    constants_to_initializers(model)
    with _quiet():
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(model, str(out_path))


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn every Constant node (value, value_float(s), value_int(s)) into an initializer of the same name."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        attr = node.attribute[0]
        if attr.name == "value":
            value = numpy_helper.to_array(attr.t)
        elif attr.name in ("value_float", "value_floats"):
            value = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float32)
        elif attr.name in ("value_int", "value_ints"):
            value = np.array(attr.i if attr.name == "value_int" else list(attr.ints), np.int64)
        else:
            continue
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        graph.node.remove(node)


def int8_weight_summary(path: Path) -> dict:
    """How many MatMul / Gather nodes were quantized, and how many MatMuls still read fp32 weights."""
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    fp32_matmuls = sum(1 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits)
    return {"MatMulNBits": ops.count("MatMulNBits"), "quantized_gathers": sum(
        1 for n in model.graph.node if n.op_type == "Gather" and n.input[0].endswith("_quantized")),
        "fp32_weight_matmuls": fp32_matmuls}
