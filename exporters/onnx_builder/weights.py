"""How weights are stored in the built graph: float MatMuls, or ONNX Runtime's block-quantized
MatMulNBits / GatherBlockQuantized, whose bytes onnxruntime's own quantizer produces.

A weight is always handed over in PyTorch's nn.Linear layout, (out, in) = (N, K). Quantization
is per block of `block_size` inputs, as MatMulNBits expects: symmetric (scale = the block's
largest-magnitude element / -2^(bits-1), codes offset by 2^(bits-1)) or, with zero points, over the
block's range (toolkit.quant fakes exactly both for quantization-aware healing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporters.onnx_builder.graph import MS, Graph

FORMATS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class WeightFormat:
    """fp32/fp16: float weights and activations of that type; int8/int4: weight-only block
    quantization with fp32 activations (accuracy_level 4 lets MatMulNBits quantize the activations
    to int8 per block for its integer kernels; 0 keeps them fp32)."""

    name: str = "fp32"
    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = True  # False: a stored zero point per block (MatMulNBits' asymmetric form)

    def __post_init__(self):
        if self.name not in FORMATS:
            raise ValueError(f"unknown weight format {self.name}: choose from {', '.join(FORMATS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block size {self.block_size} must be a power of two >= 16")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy level {self.accuracy_level} must be 0-4")

    @property
    def bits(self) -> int | None:
        return {"int8": 8, "int4": 4}.get(self.name)

    @property
    def dtype(self) -> type:
        """Activations, norms, biases and the KV cache: fp16 only in the fp16 format."""
        return np.float16 if self.name == "fp16" else np.float32


@dataclass(frozen=True)
class Quantized:
    """MatMulNBits weight of an (N, K) matrix: codes (N, blocks, block_bytes) uint8, scales (N*blocks,),
    zero points (N * ceil(blocks*bits/8),) uint8 or "" (symmetric)."""

    codes: str
    scales: str
    n: int
    k: int
    zero_points: str = ""


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int, symmetric: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """onnxruntime's own block quantizer on an (N, K) weight: (codes, scales, zero points or None)."""
    from onnxruntime.capi import _pybind_state as ort_c

    n, k = weight.shape
    blocks = -(-k // block_size)
    codes = np.zeros((n, blocks, block_size * bits // 8), np.uint8)
    scales = np.zeros(n * blocks, np.float32)
    zero_points = np.zeros(n * -(-blocks * bits // 8), np.uint8)  # written only when asymmetric
    quantize = {4: ort_c.quantize_matmul_4bits, 8: ort_c.quantize_matmul_8bits}[bits]
    quantize(codes, np.ascontiguousarray(weight.T, dtype=np.float32), scales, zero_points, block_size, n, k,
             symmetric)
    return codes, scales, None if symmetric else zero_points


def unpack(packed: np.ndarray, bits: int, n: int, count: int) -> np.ndarray:
    """(n, count) values of `bits` from rows of packed uint8 (two 4-bit values a byte, low nibble first)."""
    rows = packed.reshape(n, -1)
    if bits == 4:
        rows = np.stack([rows & 15, rows >> 4], axis=-1).reshape(n, -1)
    return rows[:, :count]


def dequantize_blocks(codes: np.ndarray, scales: np.ndarray, bits: int, k: int,
                      zero_points: np.ndarray | None = None) -> np.ndarray:
    """The (N, K) float weight that MatMulNBits computes with (for checks and tests)."""
    n, blocks, _ = codes.shape
    values = unpack(codes, bits, n, blocks * codes.shape[2] * 8 // bits).reshape(n, blocks, -1).astype(np.float32)
    zero = 2.0 ** (bits - 1) if zero_points is None else unpack(zero_points, bits, n, blocks)[..., None]
    return ((values - zero) * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, :k]


def add_quantized(g: Graph, name: str, weight: np.ndarray, fmt: WeightFormat) -> Quantized:
    codes, scales, zero_points = quantize_blocks(weight, fmt.bits, fmt.block_size, fmt.symmetric)
    return Quantized(g.weight(f"{name}.codes", codes), g.weight(f"{name}.scales", scales.astype(fmt.dtype)),
                     *weight.shape, "" if zero_points is None else g.weight(f"{name}.zero_points", zero_points))


def matmul_nbits(g: Graph, x: str, q: Quantized, name: str, fmt: WeightFormat, bias: str = "") -> str:
    inputs = [x, q.codes, q.scales] + ([q.zero_points, "", bias] if bias else [q.zero_points] if q.zero_points else [])
    return g.one("MatMulNBits", inputs, name, domain=MS, K=q.k, N=q.n, bits=fmt.bits,
                 block_size=fmt.block_size, accuracy_level=fmt.accuracy_level)


def linear(g: Graph, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str, fmt: WeightFormat) -> str:
    """y = x W^T + b for an (out, in) weight, stored as `fmt` says."""
    bias_name = g.weight(f"{name}.bias", bias.astype(fmt.dtype)) if bias is not None else ""
    if fmt.bits:
        return matmul_nbits(g, x, add_quantized(g, name, weight, fmt), f"{name}/MatMulNBits", fmt, bias_name)
    y = g.one("MatMul", [x, g.weight(f"{name}.weight", weight.T.astype(fmt.dtype))], f"{name}/MatMul")
    return g.one("Add", [y, bias_name], f"{name}/Add") if bias_name else y


def gather_table(g: Graph, table: np.ndarray, ids: str, name: str, fmt: WeightFormat) -> str:
    """Rows of an embedding table (V, H): a Gather, or GatherBlockQuantized over the same codes
    MatMulNBits would hold."""
    if not fmt.bits:
        return g.one("Gather", [g.weight(f"{name}.weight", table.astype(fmt.dtype)), ids], f"{name}/Gather")
    return gather_quantized(g, add_quantized(g, name, table, fmt), ids, name, fmt)


def gather_quantized(g: Graph, q: Quantized, ids: str, name: str, fmt: WeightFormat) -> str:
    """GatherBlockQuantized rows of a MatMulNBits weight (its N rows), reading the same bytes: a
    tied table is stored once. Its default zero point (2^(bits-1) for uint8 data) is MatMulNBits'; stored
    zero points are packed per row as MatMulNBits packs them."""
    blocks = -(-q.k // fmt.block_size)
    row_bytes = blocks * fmt.block_size * fmt.bits // 8
    codes = g.one("Reshape", [q.codes, g.const([q.n, row_bytes])], f"{name}/codes_rows")
    scales = g.one("Reshape", [q.scales, g.const([q.n, blocks])], f"{name}/scales_rows")
    inputs = [codes, ids, scales]
    if q.zero_points:
        inputs.append(g.one("Reshape", [q.zero_points, g.const([q.n, -(-blocks * fmt.bits // 8)])],
                            f"{name}/zero_points_rows"))
    rows = g.one("GatherBlockQuantized", inputs, f"{name}/GatherBlockQuantized", domain=MS,
                 bits=fmt.bits, block_size=fmt.block_size, gather_axis=0, quantize_axis=1)
    if blocks * fmt.block_size == q.k:
        return rows
    return g.one("Slice", [rows, g.const([0]), g.const([q.k]), g.const([-1])], f"{name}/unpad")
