"""GGUF export: llama.cpp loads the file and agrees with PyTorch; failures leave nothing behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device_bench.runtimes.llama_cpp import LlamaCppRuntime
from exporters.gguf import export_gguf
from toolkit.compress import compress_
from toolkit.errors import TensoredgeError


def greedy_pytorch(model, prompt: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("plan", [{}, {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"}], ids=["dense", "compressed"])
def test_llama_cpp_matches_pytorch(tiny, plan, tmp_path):
    if plan:
        compress_(tiny.model, tiny.family, plan)
    result = export_gguf(tiny, tmp_path / "m.gguf", "f32")
    # f32 weights and KV cache; llama.cpp still rounds some activations (GELU via an f16 table)
    assert result["top1_agreement"] == 1.0 and result["max_abs_logit_diff"] < 1e-3 * result["max_abs_logit"]
    # independently of the exporter's own check: greedy continuation of a real text prompt
    prompt = tiny.tokenizer("The tower is 324 metres tall, about the same height as")["input_ids"]
    runtime = LlamaCppRuntime(str(tmp_path / "m.gguf"), threads=2, max_tokens=64)
    logits, tokens = runtime.prefill(np.array(prompt)), []
    for _ in range(12):
        tokens.append(int(logits.argmax()))
        logits = runtime.decode_step(tokens[-1])
    assert tokens == greedy_pytorch(tiny.model, prompt, 12)


def test_llama_cpp_tokenizes_like_the_model_tokenizer(tiny, tmp_path):
    import llama_cpp

    export_gguf(tiny, tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, verbose=False)
    for text in ["Hello world", " The Eiffel Tower, 324 metres tall.\n  Built in 1889!", "naïve café"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tiny.tokenizer(text)["input_ids"]
    out = llm("The tower is", max_tokens=8, temperature=0.0)  # generates with no other files
    assert out["usage"]["completion_tokens"] >= 1


def test_rows_that_do_not_fit_a_block_stay_f32(tmp_path):
    from models.random_gpt2 import build_random_gpt2

    narrow = build_random_gpt2("narrow", seed=1, n_layer=1, n_embd=48, n_head=4, n_positions=64, n_ctx=64,
                               initializer_range=0.2)
    result = export_gguf(narrow, tmp_path / "q.gguf", "q8_0")
    assert result["tensors_kept_f32"] > 0 and result["top1_agreement"] >= 0.5


def test_quantized_types_run_and_are_smaller(tiny_gpt2, tmp_path):
    sizes = {}
    for kind in ("f32", "f16", "q8_0", "q4_0"):
        result = export_gguf(tiny_gpt2, tmp_path / f"{kind}.gguf", kind)
        sizes[kind] = result["file_bytes"]
        assert result["top1_agreement"] >= (0.5 if kind == "q8_0" else 0.25)
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_failed_verification_writes_nothing(tiny_gpt2, tmp_path, monkeypatch):
    """A file llama.cpp disagrees with is not kept: here the exporter's weights are corrupted."""
    import exporters.gguf as gguf_export

    real = gguf_export.gguf_tensor

    def corrupt(name, tensor, family, config):
        array = real(name, tensor, family, config)
        return -array if name.endswith("wte.weight") else array

    monkeypatch.setattr(gguf_export, "gguf_tensor", corrupt)
    with pytest.raises(TensoredgeError, match="agrees with PyTorch"):
        export_gguf(tiny_gpt2, tmp_path / "bad.gguf", "f32")
    assert list(tmp_path.iterdir()) == []


def test_unknown_type_is_a_one_line_error(tiny_gpt2, tmp_path):
    with pytest.raises(TensoredgeError, match="unknown GGUF type"):
        export_gguf(tiny_gpt2, tmp_path / "m.gguf", "q3_zz")


@pytest.mark.parametrize("kind", ["q4_k_m", "iq4_nl"])
def test_llama_cpp_quantizer_types(tiny_llama, tmp_path, kind):
    """k-quants and IQ4_NL come from llama.cpp's own quantizer: smaller than f32, checked against
    PyTorch like every other type, and the intermediate f32 file is not left behind."""
    import gguf

    result = export_gguf(tiny_llama, tmp_path / f"{kind}.gguf", kind)
    assert result["top1_agreement"] >= 0.25 and sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.gguf"]
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / f"{kind}.gguf")).tensors}
    assert types - {"F32"}, types  # quantized tensors, of llama.cpp's choosing
    f32 = export_gguf(tiny_llama, tmp_path / "f32" / "m.gguf", "f32")
    assert result["file_bytes"] < f32["file_bytes"] / 2  # rows of 64 are not k-quant blocks: llama.cpp falls back
