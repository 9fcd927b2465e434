"""Fake quantization: bit-identical to ONNX Runtime's MatMulNBits quantizer, straight-through, latent weights kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.quant import fake_quant, quant_aware, quantize, quantized_weights


def ort_quantize(weight: np.ndarray, bits: int, block: int, symmetric: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX Runtime's own codes (out, blocks, block), scales and zero points (out, blocks) of `weight`
    (out, in), called as its MatMulNBitsQuantizer calls it: on the (in, out) MatMul weight, zero-padded
    along in."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    out, width = weight.shape
    blocks = -(-width // block)
    matmul = np.ascontiguousarray(np.pad(weight.T, ((0, blocks * block - width), (0, 0))), dtype=np.float32)
    packed = np.zeros((out, blocks, block * bits // 8), dtype=np.uint8)
    scales = np.zeros(out * blocks, dtype=np.float32)
    zero_points = np.zeros(out * ((blocks * bits + 7) // 8), dtype=np.uint8)
    quantizer = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    quantizer(packed, matmul, scales, zero_points, block, out, width, symmetric)  # K unpadded, as ORT passes it
    if bits == 4:  # two codes a byte, the first in the low nibble
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(out, blocks, block)
        zero = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1).reshape(out, -1)[:, :blocks]
    else:
        codes, zero = packed, zero_points.reshape(out, blocks)
    if symmetric:
        zero = np.full((out, blocks), 2 ** (bits - 1))
    return codes.astype(np.float32), scales.reshape(out, blocks), zero.astype(np.float32)


def awkward_weight(out: int, width: int, seed: int) -> torch.Tensor:
    """Random weights with the cases that break a careless quantizer: exact ties of +m and -m,
    an all-zero block, values exactly halfway between two codes, an all-positive row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, width, generator=g) * torch.logspace(-3, 0, out)[:, None]
    w[0, :16] = torch.linspace(-1, 1, 16)  # +1 and -1 tie
    w[1, :32] = 0.0
    w[2, :8] = torch.tensor([0.5, -0.4375, 0.3125, 0.0625, -0.1875, 0.5625, 0.25, -1.0])  # halves of 1/8 steps
    w[3] = w[3].abs()
    return w


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block", [16, 32, 128])
@pytest.mark.parametrize("shape", [(24, 96), (7, 100), (64, 576)])
def test_fake_quant_is_onnxruntime_matmulnbits_exactly(bits, block, shape, symmetric):
    w = awkward_weight(*shape, seed=bits * 1000 + block)
    codes, scales, zero = quantize(w, bits, block, symmetric)
    ort_codes, ort_scales, ort_zero = ort_quantize(w.numpy(), bits, block, symmetric)
    np.testing.assert_array_equal(scales.numpy(), ort_scales)
    np.testing.assert_array_equal(zero.numpy(), ort_zero)
    real = (slice(None), slice(0, shape[1]))  # ORT leaves the padding of the last block unwritten
    np.testing.assert_array_equal(codes.reshape(shape[0], -1).numpy()[real], ort_codes.reshape(shape[0], -1)[real])
    expected = ((ort_codes - ort_zero[..., None]) * ort_scales[..., None]).reshape(shape[0], -1)[:, : shape[1]]
    fake = fake_quant(w, bits, block, symmetric)
    np.testing.assert_array_equal(fake.numpy(), expected)
    error = (fake - w).abs().max() / w.abs().max()
    assert 0 < error < (0.1 if bits == 4 else 0.006)  # it really quantizes, within half a step


def test_zero_points_fit_one_sided_blocks_closer():
    """A block of positive weights uses all 16 int4 codes with a zero point, half of them without one."""
    w = torch.rand(8, 64, generator=torch.Generator().manual_seed(0)) + 0.5
    symmetric = (fake_quant(w, 4, 32) - w).abs().max()
    asymmetric = (fake_quant(w, 4, 32, symmetric=False) - w).abs().max()
    assert asymmetric < 0.7 * symmetric


def test_quant_aware_uses_quantized_weights_and_passes_gradients_straight(tiny_gpt2):
    model = tiny_gpt2.model
    latent = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(10, 30)[None]
    with torch.no_grad():
        plain = model(ids).logits
    paths = quantized_weights(model)
    assert paths["transformer.h.0.mlp.c_fc"] is True and paths["transformer.wte"] is False  # Conv1D stored (in, out)
    assert "transformer.wpe" not in paths  # only the token table is quantized
    with quant_aware(model, 4, 32):
        c_fc = model.get_submodule("transformer.h.0.mlp.c_fc")
        torch.testing.assert_close(c_fc.weight, fake_quant(latent["transformer.h.0.mlp.c_fc.weight"].T, 4, 32).T,
                                   rtol=0, atol=0)
        torch.testing.assert_close(model.lm_head.weight, fake_quant(latent["transformer.wte.weight"], 4, 32),
                                   rtol=0, atol=0)
        model.requires_grad_(True)
        quantized = model(ids).logits
        quantized.sum().backward()
        original = model.get_submodule("transformer.h.0.mlp.c_fc").parametrizations.weight.original
        assert original.grad is not None and original.grad.abs().sum() > 0
    assert (quantized - plain).abs().max() > 1e-3  # the quantization shows in the logits
    for name, p in model.named_parameters():  # the float weights are back, tie included
        torch.testing.assert_close(p.detach(), latent[name], rtol=0, atol=0)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_low_rank_halves_are_both_quantized(tiny_llama):
    from toolkit.compress import compress_

    compress_(tiny_llama.model, "llama", {"mlp": "svd:ratio=2"})
    paths = quantized_weights(tiny_llama.model)
    assert {"model.layers.0.mlp.up_proj.down", "model.layers.0.mlp.up_proj.up", "lm_head",
            "model.embed_tokens", "model.layers.1.self_attn.q_proj"} <= set(paths)
