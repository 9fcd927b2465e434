"""Fake quantization: the weights a model will have once its file is quantized, for training towards it.

`fake_quant(w, bits, block)` is ONNX Runtime's MatMulNBits symmetric block quantizer
(`onnxruntime.capi._pybind_state.quantize_matmul_4bits` / `quantize_matmul_8bits`, MLAS) followed
by its dequantization, computed the same way in float32 so that the result is bit-identical: for a
weight viewed as (out, in), each block of `block` consecutive elements along `in` (the last one
padded with zeros) has scale = m / -2^(bits-1), where m is the block's element of largest magnitude
with its sign (the negative one on a tie), and
q = clip(roundf(w * (1/scale) + 2^(bits-1)), 0, 2^bits - 1), w' = (q - 2^(bits-1)) * scale.

`quant_aware(model, bits, block)` makes every weight that the ONNX exporter quantizes read as its
fake-quantized value in the forward pass, with straight-through gradients to the float weights it
keeps (the latent weights, which are what gets saved).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from toolkit.errors import TensoredgeError

BITS = (4, 8)


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


def quantize(w: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (out, blocks, block) in 0..2^bits-1 and scales (out, blocks) of `w` (out, in), float32."""
    mid = float(1 << (bits - 1))
    out, width = w.shape
    blocks = -(-width // block)
    x = torch.nn.functional.pad(w.float(), (0, blocks * block - width)).reshape(out, blocks, block)
    high, low = x.amax(-1), x.amin(-1)
    extreme = torch.where(high.abs() > low.abs(), high, low)
    scale = -extreme / mid
    reciprocal = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    codes = _roundf(x * reciprocal[..., None] + mid).clamp_(0, 2 * mid - 1)
    return codes, scale


def fake_quant(w: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """`w` (out, in) as it reads after quantization to `bits` in blocks of `block` along `in`."""
    codes, scale = quantize(w, bits, block)
    mid = float(1 << (bits - 1))
    dequantized = ((codes - mid) * scale[..., None]).reshape(w.shape[0], -1)[:, : w.shape[1]]
    return dequantized.to(w.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly the fake-quantized weight; backward: the gradient as it is."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int, block: int, transposed: bool) -> torch.Tensor:
        if transposed:
            return fake_quant(weight.T, bits, block).T.contiguous()
        return fake_quant(weight, bits, block)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None, None


class FakeQuant(nn.Module):
    """A parametrization: the weight's fake-quantized value forward, the identity backward."""

    def __init__(self, bits: int, block: int, transposed: bool = False):
        super().__init__()
        self.bits, self.block, self.transposed = bits, block, transposed

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.bits, self.block, self.transposed)


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
def quant_aware(model: nn.Module, bits: int, block: int) -> Iterator[list[str]]:
    """Within the block, `model` computes with fake-quantized weights (straight-through); yields the
    paths of the quantized modules. On exit the float (latent) weights are put back, ties kept."""
    check(bits, block)
    paths = quantized_weights(model)
    for path, transposed in paths.items():
        parametrize.register_parametrization(model.get_submodule(path), "weight",
                                             FakeQuant(bits, block, transposed))
    try:
        yield list(paths)
    finally:
        for path in paths:
            module = model.get_submodule(path)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
