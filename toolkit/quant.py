"""Fake quantization: the weights a model will have once its file is quantized, for training towards it.

`fake_quant(w, bits, block, symmetric)` is ONNX Runtime's MatMulNBits block quantizer
(`onnxruntime.capi._pybind_state.quantize_matmul_4bits` / `quantize_matmul_8bits`, MLAS) followed
by its dequantization, computed the same way in float32 so that the result is bit-identical. For a
weight viewed as (out, in), each block of `block` consecutive elements along `in` (the last one
padded with zeros) has a scale and a zero point z, q = clip(roundf(w * (1/scale) + z), 0, 2^bits - 1)
and w' = (q - z) * scale:
- symmetric: scale = m / -2^(bits-1), where m is the block's element of largest magnitude with its
  sign (the negative one on a tie), z = 2^(bits-1) (implicit, not stored);
- asymmetric: lo = min(block min, 0), hi = max(block max, 0), scale = (hi - lo) / (2^bits - 1),
  z = roundf(clip(-lo / scale, 0, 2^bits - 1)), stored beside the scales (4 more bits per block at int4).

`quant_aware(model, bits, block, symmetric)` makes every weight that the ONNX exporter quantizes read as its
fake-quantized value in the forward pass, with straight-through gradients to the float weights it
keeps (the latent weights, which are what gets saved).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from toolkit.errors import TensoredgeError

BITS = (4, 8)


@dataclass(frozen=True)
class QuantScheme:
    """Weight-only block quantization as MatMulNBits stores it."""

    bits: int = 4
    block: int = 32
    symmetric: bool = True

    def __str__(self) -> str:
        return f"int{self.bits} in blocks of {self.block}" + ("" if self.symmetric else " with zero points")


def check(bits: int, block: int) -> None:
    """A one-line error for settings MatMulNBits does not have."""
    if bits not in BITS:
        raise TensoredgeError(f"{bits}-bit weights are not simulated: choose int4 or int8")
    if block < 16 or block & (block - 1):
        raise TensoredgeError(f"--quant-block {block}: MatMulNBits takes a power of two >= 16, e.g. 32")


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds them to even)."""
    t = torch.trunc(x)
    return t + torch.where((x - t).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def quantize(w: torch.Tensor, bits: int, block: int, symmetric: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (out, blocks, block) in 0..2^bits-1, scales and zero points (out, blocks) of `w`
    (out, in), float32."""
    mid, top = float(1 << (bits - 1)), float((1 << bits) - 1)
    out, width = w.shape
    blocks = -(-width // block)
    x = torch.nn.functional.pad(w.float(), (0, blocks * block - width)).reshape(out, blocks, block)
    high, low = x.amax(-1), x.amin(-1)
    if symmetric:
        extreme = torch.where(high.abs() > low.abs(), high, low)
        scale = -extreme / mid
        zero = torch.full_like(scale, mid)
    else:
        low, high = low.clamp(max=0), high.clamp(min=0)
        scale = (high - low) / top
        zero = _roundf(torch.where(scale != 0, 0.0 - low / scale, low).clamp(0, top))
    reciprocal = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    codes = _roundf(x * reciprocal[..., None] + zero[..., None]).clamp_(0, top)
    return codes, scale, zero


def fake_quant(w: torch.Tensor, bits: int, block: int, symmetric: bool = True) -> torch.Tensor:
    """`w` (out, in) as it reads after quantization to `bits` in blocks of `block` along `in`."""
    codes, scale, zero = quantize(w, bits, block, symmetric)
    dequantized = ((codes - zero[..., None]) * scale[..., None]).reshape(w.shape[0], -1)[:, : w.shape[1]]
    return dequantized.to(w.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly the fake-quantized weight; backward: the gradient as it is."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scheme: QuantScheme, transposed: bool) -> torch.Tensor:
        if transposed:
            return fake_quant(weight.T, scheme.bits, scheme.block, scheme.symmetric).T.contiguous()
        return fake_quant(weight, scheme.bits, scheme.block, scheme.symmetric)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


class FakeQuant(nn.Module):
    """A parametrization: the weight's fake-quantized value forward, the identity backward."""

    def __init__(self, scheme: QuantScheme, transposed: bool = False):
        super().__init__()
        self.scheme, self.transposed = scheme, transposed

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.scheme, self.transposed)


def quantized_weights(model: nn.Module) -> dict[str, bool]:
    """Modules whose `weight` the ONNX exporter quantizes, by path, with whether it is stored (in, out).

    Every nn.Linear (the halves of factorized linears and the LM head included), GPT-2's Conv1D,
    and the token embedding when it is a plain table (quantized in blocks along the hidden size).
    """
    embedding = model.get_input_embeddings()
    found = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) or (module is embedding and isinstance(module, nn.Embedding)):
            found[path] = False
        elif type(module).__name__ == "Conv1D":
            found[path] = True
    return found


@contextmanager
def quant_aware(model: nn.Module, bits: int, block: int, symmetric: bool = True) -> Iterator[list[str]]:
    """Within the block, `model` computes with fake-quantized weights (straight-through); yields the
    paths of the quantized modules. On exit the float (latent) weights are put back, ties kept."""
    check(bits, block)
    scheme = QuantScheme(bits, block, symmetric)
    paths = quantized_weights(model)
    for path, transposed in paths.items():
        parametrize.register_parametrization(model.get_submodule(path), "weight",
                                             FakeQuant(scheme, transposed))
    try:
        yield list(paths)
    finally:
        for path in paths:
            module = model.get_submodule(path)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
