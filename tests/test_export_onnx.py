"""ONNX export: KV cache, factors kept, parity with PyTorch checked before writing, nothing half-written."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from device_bench.generate import generate_ids
from device_bench.onnx_lm import OnnxCausalLM
from exporters.onnx import export_onnx
from exporters.onnx_graph import check_elements_kept, check_factors_kept, graph_weight_bytes
from exporters.onnx_parity import cached_logits, check_parity, torch_greedy
from toolkit.compress import compress_
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError

PLANS = {"dense": {}, "compressed": {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"}}
_EXPORTS: dict = {}  # (model, plan) -> (loaded, export dir, result): each export is made once per session


def exported(loaded, plan_name: str, tmp_path_factory):
    """`loaded` compressed with PLANS[plan_name] and exported (GPT-2 with int8, fp16 and .ort as well)."""
    key = (loaded.name, plan_name)
    if key not in _EXPORTS:
        if PLANS[plan_name]:
            compress_(loaded.model, loaded.family, PLANS[plan_name])
        out = tmp_path_factory.mktemp("onnx") / f"{loaded.name}-{plan_name}"
        extra = dict(precisions=("int8", "fp16"), ort_format=True) if loaded.family == "gpt2" else {}
        _EXPORTS[key] = (loaded, out, export_onnx(loaded, out, **extra))
    return _EXPORTS[key]


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids), use_cache=False).logits.numpy()


@pytest.mark.parametrize("plan", PLANS)
def test_cached_export_matches_pytorch_and_keeps_factors(tiny, plan, tmp_path_factory):
    tiny, folder, result = exported(tiny, plan, tmp_path_factory)
    params = count_parameters(tiny.model)["total"]["bytes"]
    weights = graph_weight_bytes(onnx.load(str(folder / "model.onnx")))
    assert params * 0.98 <= weights <= params * 1.01 and result["model_param_bytes"] == params
    assert result["files"]["fp32"]["parity"]["greedy_tokens_equal"] == 32
    lm = OnnxCausalLM(folder)
    assert lm.kv_cache and lm.layers == tiny.model.config.num_hidden_layers
    names = [i.name for i in lm.session.get_inputs()]
    assert names[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    ids = np.random.default_rng(3).integers(0, 50257, size=(3, 23), dtype=np.int64)
    expected = torch_logits(tiny.model, ids)
    np.testing.assert_allclose(lm.logits(ids), expected, atol=1e-4, rtol=1e-4)  # prefill, batch 3
    np.testing.assert_allclose(cached_logits(lm, ids, 15), expected, atol=1e-4, rtol=1e-4)  # then one at a time
    assert lm.meta["vocab_size"] == "50257"
    for name in ("config.json", "tokenizer.json", "export.json"):
        assert (folder / name).is_file()


def test_generate_gives_pytorch_greedy_tokens(tiny_llama, tmp_path_factory):
    tiny_llama, folder, _ = exported(tiny_llama, "compressed", tmp_path_factory)
    prompt = np.array(tiny_llama.tokenizer("The tensor train")["input_ids"])
    ours = list(generate_ids(OnnxCausalLM(folder), prompt, 20))
    assert ours == torch_greedy(tiny_llama.model, prompt, 20)


def test_compressed_graph_is_smaller_than_dense(tiny_gpt2, tmp_path_factory):
    dense = exported(tiny_gpt2, "dense", tmp_path_factory)[2]["files"]["fp32"]["file_bytes"]
    small = exported(copy.deepcopy(tiny_gpt2), "compressed", tmp_path_factory)[2]["files"]["fp32"]["file_bytes"]
    assert small < 0.4 * dense


def test_a_re_densified_graph_is_refused(tiny_gpt2, tmp_path_factory):
    """Take the dense export, then claim it is the compressed model: the byte check must refuse it."""
    _, folder, _ = exported(copy.deepcopy(tiny_gpt2), "dense", tmp_path_factory)
    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:ratio=4"})
    counts = count_parameters(tiny_gpt2.model)["total"]
    with pytest.raises(TensoredgeError, match="re-densified"):
        check_factors_kept(onnx.load(str(folder / "model.onnx")), counts["bytes"])
    with pytest.raises(TensoredgeError, match="re-densified"):  # int8 graphs are checked by element count
        check_elements_kept(onnx.load(str(folder / "model_int8.onnx")), counts["params"])


def test_constant_folding_re_densifies_and_is_caught(tiny_gpt2, tmp_path_factory, tmp_path):
    """What the check exists for: onnxruntime's own optimiser folds the tied TT head into a dense table."""
    import onnxruntime as ort

    model, folder, _ = exported(tiny_gpt2, "compressed", tmp_path_factory)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # includes constant folding
    opts.optimized_model_filepath = str(tmp_path / "folded.onnx")
    ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    with pytest.raises(TensoredgeError, match="re-densified"):
        check_factors_kept(onnx.load(str(tmp_path / "folded.onnx")), count_parameters(model.model)["total"]["bytes"])


def test_parity_failure_writes_nothing(tiny_gpt2, tmp_path):
    with pytest.raises(TensoredgeError, match="differ from PyTorch"):
        export_onnx(tiny_gpt2, tmp_path / "m", atol=0.0, rtol=0.0, float64_slack=0.0)
    assert list(tmp_path.iterdir()) == []


def test_rounding_beyond_the_tolerance_is_judged_against_float64(tiny_gpt2, tmp_path_factory):
    """With no fp32 tolerance at all, a correct export still passes: it is as close to float64
    PyTorch as PyTorch fp32 is. A model that computes something else is refused all the same."""
    loaded, folder, _ = exported(tiny_gpt2, "dense", tmp_path_factory)
    lm = OnnxCausalLM(folder)
    vocab = loaded.model.config.vocab_size
    found = check_parity(lm, loaded.model, vocab, atol=0.0, rtol=0.0)
    assert 0 < found["float64"]["export"] <= 2 * found["float64"]["pytorch_fp32"]
    other = copy.deepcopy(loaded.model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.001)  # tied with the embedding: a 0.1% different model
    with pytest.raises(TensoredgeError, match="float64 PyTorch"):
        check_parity(lm, other, vocab, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("plan", PLANS)
def test_int8_fp16_and_ort_format(tiny_gpt2, plan, tmp_path_factory):
    tiny_gpt2, folder, result = exported(tiny_gpt2, plan, tmp_path_factory)
    files = result["files"]
    quantized = files["int8"]["quantized"]
    assert quantized["MatMulNBits"] >= 9 and quantized["fp32_weight_matmuls"] == 0  # every linear, both factors
    assert files["fp16"]["graph_weight_bytes"] < 0.55 * files["fp32"]["graph_weight_bytes"]
    if plan == "dense":  # (TT cores are gathered by an index op the quantizer leaves fp32.) Dense weights shrink
        # ~3.5x, but the tied table is stored twice at int8: in the head's MatMulNBits blocks and for the lookup.
        twice = files["int8"]["tied_table_stored_twice"]
        assert twice == tiny_gpt2.model.get_input_embeddings().weight.numel()
        assert files["int8"]["graph_weight_bytes"] < 0.3 * files["fp32"]["graph_weight_bytes"] + 1.1 * twice
    ids = np.random.default_rng(0).integers(0, 50257, size=(1, 12), dtype=np.int64)
    expected = torch_logits(tiny_gpt2.model, ids)
    for name in ("model_int8.onnx", "model_fp16.onnx", "model.ort", "model_int8.ort", "model_fp16.ort"):
        lm = OnnxCausalLM(folder / name)
        got = lm.logits(ids)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.15
        assert list(generate_ids(lm, ids[0], 3))  # the cached decode runs
    np.testing.assert_allclose(OnnxCausalLM(folder / "model.ort").logits(ids), expected, atol=1e-4, rtol=1e-4)
    config = (folder / "required_operators.config").read_text()
    assert "com.microsoft;1;MatMulNBits" in config and "MatMul" in config


def test_unknown_precision_is_one_line(tiny_gpt2, tmp_path):
    with pytest.raises(TensoredgeError, match="unknown precision"):
        export_onnx(tiny_gpt2, tmp_path / "e", precisions=("int4",))


def test_out_must_be_a_directory(tiny_gpt2, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(TensoredgeError, match="takes a directory"):
        export_onnx(tiny_gpt2, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old"


def test_int8_block_padding_of_small_ranks_is_not_re_densification(tiny_gpt2, tmp_path):
    """MatMulNBits pads K to its block size (32): a rank-7 factor must count as its 7 x N elements."""
    compress_(tiny_gpt2.model, "gpt2", {"mlp": "svd:rank=7"})
    result = export_onnx(tiny_gpt2, tmp_path / "m", precisions=("int8",))
    entry = result["files"]["int8"]
    params = count_parameters(tiny_gpt2.model)["total"]["params"]
    expected = params + entry["tied_table_stored_twice"]  # plus a few scalar constants of the graph
    assert expected <= entry["graph_weight_elements"] <= expected * 1.0001
