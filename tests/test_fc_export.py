"""Models compressed by the FC methods flow into both exporters (each checks itself against
PyTorch), or are refused with a one-line error where a format cannot hold them."""

from __future__ import annotations

import pytest

from exporters.gguf import export_gguf
from exporters.gguf_container import export_container
from exporters.onnx import export_onnx
from toolkit.compress import compress_
from toolkit.errors import TensoredgeError

PLANS = {
    "svd-llm": {"mlp": "svd-llm:ratio=2", "attention": "svd-llm:ratio=1.5"},
    "feature": {"mlp": "feature:ratio=2"},
    "tt-linear": {"mlp": "tt-linear:ratio=2"},
    "trawl": {"mlp": "trawl:decomp=tucker,ratio=2"},
}


@pytest.fixture(autouse=True)
def few_calibration_tokens(monkeypatch):
    from toolkit.compress import context

    monkeypatch.setattr(context.Context, "calibration_tokens", 1024)


@pytest.mark.parametrize("method", PLANS)
def test_onnx_export_matches_pytorch(tiny, method, tmp_path):
    compress_(tiny.model, tiny.family, PLANS[method], tokenizer=tiny.tokenizer)
    result = export_onnx(tiny, tmp_path / "m")  # refuses to write on mismatch or re-densified graph
    assert (tmp_path / "m" / "model.onnx").is_file() and result["path"] == str(tmp_path / "m")


@pytest.mark.parametrize("method", PLANS)
def test_gguf_export_matches_llama_cpp(tiny, method, tmp_path):
    """Includes feature-space on Llama, whose mean correction adds biases (llama.cpp takes them)."""
    compress_(tiny.model, tiny.family, PLANS[method], tokenizer=tiny.tokenizer)
    result = export_gguf(tiny, tmp_path / "m.gguf", "f32")
    assert result["top1_agreement"] == 1.0


def test_container_holds_whitened_low_rank(tiny_gpt2, tmp_path):
    compress_(tiny_gpt2.model, "gpt2", PLANS["svd-llm"], tokenizer=tiny_gpt2.tokenizer)
    assert export_container(tiny_gpt2, tmp_path / "c.gguf")["top1_agreement"] == 1.0


def test_container_refuses_tensor_train_layers_in_one_line(tiny_gpt2, tmp_path):
    compress_(tiny_gpt2.model, "gpt2", {"mlp": "tt-linear:ratio=2"})
    with pytest.raises(TensoredgeError, match="cannot hold TTLinear") as info:
        export_container(tiny_gpt2, tmp_path / "d.gguf")
    assert "\n" not in str(info.value)
