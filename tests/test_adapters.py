"""TT-LoRA adapters: real parameter counts, exact merges, llama.cpp LoRA GGUF (their training: test_heal.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.adapters import (adapter_parameters, adapters_of, add_adapters_, load_adapters_,
                              merge_adapters_, remove_adapters_, save_adapters)
from toolkit.adapters.tt_lora import TTLoRAConfig, tt_matrix
from toolkit.compress import compress_
from toolkit.errors import TensoredgeError

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def randomise_(model, scale=0.3, seed=1):
    """Give every adapter a non-zero update (a fresh adapter is zero by construction)."""
    generator = torch.Generator().manual_seed(seed)
    for adapter in adapters_of(model).values():
        for core in adapter.cores:
            core.data.copy_(torch.randn(core.shape, generator=generator) * scale)


def test_parameter_count_as_configured(tiny_gpt2):
    add_adapters_(tiny_gpt2.model, "gpt2", ["mlp"], TTLoRAConfig(rank=2, order=3))
    # c_fc is 256 x 64: out (4, 8, 8), in (4, 4, 4), bonds 2, 2 -> 1*4*4*2 + 2*8*4*2 + 2*8*4*1 = 224;
    # c_proj is 64 x 256, the same count. Two of each in two layers.
    assert adapter_parameters(tiny_gpt2.model) == 4 * 224
    trainable = sum(p.numel() for p in tiny_gpt2.model.parameters() if p.requires_grad)
    assert trainable == 4 * 224


def test_tt_matrix_is_the_kronecker_structure():
    """A rank-1 TT-matrix is the Kronecker product of its cores' matrices."""
    a, b = torch.randn(1, 2, 3, 1, dtype=torch.float64), torch.randn(1, 4, 5, 1, dtype=torch.float64)
    torch.testing.assert_close(tt_matrix([a, b]), torch.kron(a[0, :, :, 0], b[0, :, :, 0]))


def test_fresh_adapter_changes_nothing_and_random_one_does(tiny):
    before = logits(tiny.model)
    add_adapters_(tiny.model, tiny.family, ["mlp", "attention"], TTLoRAConfig(rank=3))
    torch.testing.assert_close(logits(tiny.model), before)
    randomise_(tiny.model)
    assert (logits(tiny.model) - before).abs().max() > 1e-2


@pytest.mark.parametrize("plan", [{}, {"mlp": "svd:ratio=2"}])
def test_merge_equals_unmerged_output(tiny, plan):
    compress_(tiny.model, tiny.family, plan)
    add_adapters_(tiny.model, tiny.family, ["attention"] if not plan else ["attention", "mlp"], TTLoRAConfig(rank=2))
    randomise_(tiny.model, scale=0.2)
    if plan:  # low-rank bases are re-factorised at their rank: exact only for the dense ones
        for adapter in [a for p, a in adapters_of(tiny.model).items() if ".mlp." in p]:
            adapter.cores[-1].data.zero_()
    expected = logits(tiny.model)
    errors = merge_adapters_(tiny.model)
    assert not adapters_of(tiny.model)
    torch.testing.assert_close(logits(tiny.model), expected, atol=1e-4, rtol=1e-4)
    assert all(e < 1e-5 for e in errors.values())


def test_merge_into_low_rank_reports_its_true_error(tiny_gpt2):
    compress_(tiny_gpt2.model, "gpt2", {"mlp": "svd:rank=8"})
    add_adapters_(tiny_gpt2.model, "gpt2", ["mlp"], TTLoRAConfig(rank=2))
    randomise_(tiny_gpt2.model, scale=0.2)
    adapter = tiny_gpt2.model.get_submodule("transformer.h.0.mlp.c_fc")
    wanted = (adapter.base.up.weight @ adapter.base.down.weight + adapter.delta_weight()).detach()
    errors = merge_adapters_(tiny_gpt2.model)
    merged = tiny_gpt2.model.get_submodule("transformer.h.0.mlp.c_fc")
    assert merged.down.weight.shape[0] == 8  # parameters unchanged
    actual = float((merged.up.weight @ merged.down.weight - wanted).norm() / wanted.norm())
    assert errors["transformer.h.0.mlp.c_fc"] == pytest.approx(actual, rel=1e-3)
    assert 0 < actual < 1


def test_adapters_save_and_reload_with_identical_logits(tiny, tmp_path):
    add_adapters_(tiny.model, tiny.family, ["mlp"], TTLoRAConfig(rank=3))
    randomise_(tiny.model)
    expected = logits(tiny.model)
    save_adapters(tiny.model, tmp_path / "adapter", base=tiny.name)
    remove_adapters_(tiny.model)
    load_adapters_(tiny.model, tmp_path / "adapter")
    torch.testing.assert_close(logits(tiny.model), expected)


def test_adapter_on_the_wrong_base_is_refused(tiny_gpt2, tiny_llama, tmp_path):
    add_adapters_(tiny_gpt2.model, "gpt2", ["mlp"], TTLoRAConfig(rank=2))
    save_adapters(tiny_gpt2.model, tmp_path / "adapter", base="tiny-gpt2")
    with pytest.raises(TensoredgeError, match="lacks"):
        load_adapters_(tiny_llama.model, tmp_path / "adapter")


def test_lora_gguf_loads_in_llama_cpp_and_moves_logits_as_pytorch_predicts(tiny, tmp_path):
    from device_bench.runtimes.llama_cpp import LlamaCppRuntime
    from exporters.gguf import export_gguf
    from exporters.lora_gguf import base_of, export_lora_gguf

    compress_(tiny.model, tiny.family, {"mlp": "svd:ratio=2"})
    add_adapters_(tiny.model, tiny.family, ["mlp", "attention"], TTLoRAConfig(rank=2))
    randomise_(tiny.model, scale=0.3)
    base_path = tmp_path / "base.gguf"
    export_gguf(base_of(tiny), base_path, "f32")
    result = export_lora_gguf(tiny, tmp_path / "lora.gguf", tolerance=1e-7, base_gguf=base_path)
    assert result["top1_agreement"] == 1.0 and result["max_relative_error"] < 1e-5

    prompt = np.arange(5, 21)
    plain = LlamaCppRuntime(str(base_path), threads=2, max_tokens=32, f32_cache=True).prefill(prompt)
    adapted = LlamaCppRuntime(str(base_path), threads=2, max_tokens=32, f32_cache=True,
                              lora_path=str(tmp_path / "lora.gguf")).prefill(prompt)
    ids = torch.tensor(prompt)[None]
    expected_adapted = logits(tiny.model, ids)[0, -1].numpy()
    expected_plain = logits(base_of(tiny).model, ids)[0, -1].numpy()
    change, expected_change = adapted - plain, expected_adapted - expected_plain
    assert np.abs(expected_change).max() > 0.1  # the adapter matters
    np.testing.assert_allclose(change, expected_change, atol=1e-3 * np.abs(expected_adapted).max() + 1e-4)


def test_lora_rank_follows_the_tolerance(tiny_gpt2, tmp_path):
    from exporters.lora_gguf import base_of, export_lora_gguf

    add_adapters_(tiny_gpt2.model, "gpt2", ["mlp"], TTLoRAConfig(rank=2))
    randomise_(tiny_gpt2.model, scale=0.1)
    base = tmp_path / "base.gguf"
    from exporters.gguf import export_gguf

    export_gguf(base_of(tiny_gpt2), base, "f32")
    loose = export_lora_gguf(tiny_gpt2, tmp_path / "loose.gguf", tolerance=0.1, base_gguf=base)
    tight = export_lora_gguf(tiny_gpt2, tmp_path / "tight.gguf", tolerance=0.001, base_gguf=base)
    assert loose["rank"] < tight["rank"] and loose["file_bytes"] < tight["file_bytes"]
    assert loose["max_relative_error"] <= 0.1 and tight["max_relative_error"] <= 0.001
