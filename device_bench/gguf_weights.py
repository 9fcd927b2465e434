"""GGUF weight types and the per-tensor quantization rule, shared by the exporter and materialize."""

from __future__ import annotations

import numpy as np

TYPE_NAMES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


def weight_types() -> dict[str, tuple]:
    """name -> (GGMLQuantizationType, LlamaFileType)."""
    import gguf

    Q, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16),
            **{name: (Q[name.upper()], F[f"MOSTLY_{name.upper()}"]) for name in TYPE_NAMES[2:]}}


def quantized(array: np.ndarray, qtype) -> tuple[np.ndarray, object]:
    """(data, type): `qtype`, or f32 for 1-D tensors and rows that do not fit a quant block."""
    import gguf

    array = np.ascontiguousarray(array, dtype=np.float32)
    f32 = gguf.GGMLQuantizationType.F32
    if qtype == f32 or array.ndim < 2 or array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return array, f32
    return gguf.quants.quantize(array, qtype), qtype
