"""ONNX export: the fused graph, factors kept, parity with PyTorch checked before writing, every
precision, the in-place KV cache, ONNX Runtime GenAI, nothing half-written."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from device_bench.errors import BenchError
from device_bench.generate import generate_ids
from device_bench.onnx_lm import OnnxCausalLM
from exporters.onnx import export_onnx
from exporters.onnx_builder import WeightFormat, build_decoder
from exporters.onnx_builder.reference import quantized_reference
from exporters.onnx_builder.weights import dequantize_blocks, quantize_blocks
from exporters.onnx_graph import check_elements_kept, op_counts
from exporters.onnx_parity import cached_logits, check_parity, torch_greedy
from toolkit.compress import compress_
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError

PLANS = {"dense": {}, "compressed": {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"},
         "low-rank": {"mlp": "svd:ratio=1.5", "attention": "svd:ratio=1.5", "embedding": "svd-table:ratio=2,head=lowrank"}}
_EXPORTS: dict = {}  # (model, plan) -> (loaded, export dir, result): each export is made once per session


def exported(loaded, plan_name: str, tmp_path_factory):
    """`loaded` compressed with PLANS[plan_name] and exported at fp32 and int4; dense at int8 and fp16
    as well (and .ort for GPT-2)."""
    key = (loaded.name, plan_name)
    if key not in _EXPORTS:
        if PLANS[plan_name]:
            compress_(loaded.model, loaded.family, PLANS[plan_name])
        out = tmp_path_factory.mktemp("onnx") / f"{loaded.name}-{plan_name}"
        precisions = ("fp32", "int4", "int8", "fp16") if plan_name == "dense" else ("fp32", "int4")
        extra = dict(ort_format=True) if (loaded.family, plan_name) == ("gpt2", "dense") else {}
        _EXPORTS[key] = (loaded, out, export_onnx(loaded, out, precisions=precisions, **extra))
    return _EXPORTS[key]


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids), use_cache=False).logits.numpy()


@pytest.mark.parametrize("plan", PLANS)
def test_export_matches_pytorch_and_keeps_factors(tiny, plan, tmp_path_factory):
    tiny, folder, result = exported(tiny, plan, tmp_path_factory)
    params = count_parameters(tiny.model)["total"]["params"]
    assert params <= result["files"]["fp32"]["graph_weight_elements"] <= params * 1.001  # no dense product
    assert result["files"]["fp32"]["parity"]["greedy_tokens_equal"] == 32
    lm = OnnxCausalLM(folder / "model.onnx")
    assert lm.kv_cache and lm.shared_buffer and lm.layers == tiny.model.config.num_hidden_layers
    names = [i.name for i in lm.session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "past_key_values.0.key"]  # GenAI's interface
    ids = np.random.default_rng(3).integers(0, 50257, size=(3, 23), dtype=np.int64)
    expected = torch_logits(tiny.model, ids)
    np.testing.assert_allclose(lm.logits(ids), expected, atol=1e-4, rtol=1e-4)  # prefill, batch 3
    np.testing.assert_allclose(cached_logits(lm, ids, 15), expected, atol=1e-4, rtol=1e-4)  # then one at a time
    for name in ("config.json", "tokenizer.json", "export.json", "genai_config.json"):
        assert (folder / name).is_file()


@pytest.mark.parametrize("plan", ["dense", "low-rank"])
def test_graph_is_fused(tiny, plan, tmp_path_factory):
    """One GroupQueryAttention per layer and no unfused attention left (no Softmax), skip-norms, and
    every weight of a dense or low-rank model read by MatMulNBits at int4: a factorized linear is two."""
    tiny, folder, result = exported(tiny, plan, tmp_path_factory)
    layers = tiny.model.config.num_hidden_layers
    for precision, entry in result["files"].items():
        ops = entry["ops"]
        assert ops["GroupQueryAttention"] == layers and "Softmax" not in ops, precision
        skip = "SkipSimplifiedLayerNormalization" if tiny.family == "llama" else "SkipLayerNormalization"
        assert ops[skip] == 2 * layers, precision
    proto = onnx.load(str(folder / "model_int4.onnx"))
    inits = {t.name for t in proto.graph.initializer}
    weights = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & inits]
    assert [n.name for n in weights] in ([], ["rotary/freqs"])  # RoPE's table, folded at load
    ops = op_counts(proto)
    # dense: q, k, v packed, gate and up packed (4). Low-rank Llama: the `down` factors of q, k, v stacked in
    # one MatMulNBits and those of gate and up in another, then each `up` (1 + 3 + 2 for o + 1 + 2 + 2 for down).
    # GPT-2: c_attn, attn c_proj, c_fc, mlp c_proj, two each.
    per_layer = 4 if plan == "dense" else (11 if tiny.family == "llama" else 8)
    head = 1 if plan == "dense" else 3  # low-rank head, and the svd-table embedding's right factor
    assert ops["MatMulNBits"] == layers * per_layer + head
    assert ops["GatherBlockQuantized"] >= 1


def test_tied_table_is_stored_once(tiny_llama, tmp_path_factory):
    """The head's MatMulNBits codes are also the table GatherBlockQuantized reads: int4 weights come
    to about 5/32 of fp32 (4 bits and a scale per 32), with no second copy of the table."""
    _, folder, result = exported(tiny_llama, "dense", tmp_path_factory)
    table = tiny_llama.model.get_input_embeddings().weight.numel()
    big = [t for t in onnx.load(str(folder / "model_int4.onnx")).graph.initializer if np.prod(t.dims) * 2 >= table]
    assert len(big) == 1
    fp32, int4 = result["files"]["fp32"]["graph_weight_bytes"], result["files"]["int4"]["graph_weight_bytes"]
    assert int4 < 0.165 * fp32


@pytest.mark.parametrize("plan", ["dense", "low-rank"])
def test_quantized_export_computes_its_own_weights(tiny, plan, tmp_path_factory, tmp_path):
    """At accuracy_level 0 an int4/int8 file is exactly PyTorch running on the file's dequantized
    weights (the full parity gate passes); the default level 4 stays within the stated limits."""
    tiny, folder, result = exported(tiny, plan, tmp_path_factory)
    assert result["files"]["int4"]["agreement"]["relative_logit_error"] <= 0.05
    precision = "int8" if plan == "dense" else "int4"
    exact = export_onnx(tiny, tmp_path / f"{precision}-exact", precisions=(precision,), accuracy_level=0)
    assert exact["files"][precision]["parity"]["greedy_tokens_equal"] == 32


def test_onnxruntimes_quantizer_is_inverted_exactly():
    """Codes times scales give back each weight to within one step of its block (the largest
    magnitude / 2^(bits-1)); the block's largest-magnitude element comes back exactly."""
    weight = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    for bits in (4, 8):
        codes, scales, _ = quantize_blocks(weight, bits, 32)
        back = dequantize_blocks(codes, scales, bits, 64)
        blocks, back_blocks = weight.reshape(5, 2, 32), back.reshape(5, 2, 32)
        step = np.abs(blocks).max(-1, keepdims=True) / 2 ** (bits - 1)
        assert np.all(np.abs(back_blocks - blocks) <= step * (1 + 1e-6))
        largest = np.abs(blocks).argmax(-1)[..., None]
        np.testing.assert_array_equal(np.take_along_axis(back_blocks, largest, -1),
                                      np.take_along_axis(blocks, largest, -1))


def test_in_place_cache_decodes_pytorchs_tokens_and_grows(tiny_llama, tmp_path_factory):
    tiny_llama, folder, _ = exported(tiny_llama, "compressed", tmp_path_factory)
    prompt = np.array(tiny_llama.tokenizer("The tensor train")["input_ids"])
    expected = torch_greedy(tiny_llama.model, prompt, 20)
    assert list(generate_ids(OnnxCausalLM(folder), prompt, 20)) == expected
    small = OnnxCausalLM(folder, max_tokens=len(prompt) + 2)  # outgrown after two steps: reallocated
    assert list(generate_ids(small, prompt, 20)) == expected
    assert small._buffers.capacity >= len(prompt) + 20


def test_symbolic_kv_shapes_are_read_from_genai_config(tiny_llama, tmp_path_factory, tmp_path):
    """GenAI's builder names the KV heads and head size symbolically in the graph: the runner takes them
    from genai_config.json, and decodes the same tokens as with static shapes."""
    tiny_llama, folder, _ = exported(tiny_llama, "compressed", tmp_path_factory)
    proto = onnx.load(str(folder / "model.onnx"))
    for value in [*proto.graph.input, *proto.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dims = value.type.tensor_type.shape.dim
            dims[1].dim_param, dims[3].dim_param = "num_kv_heads", "head_size"
    onnx.save(proto, str(tmp_path / "model.onnx"))
    config = json.loads((folder / "genai_config.json").read_text())
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    prompt = np.array(tiny_llama.tokenizer("The tensor train")["input_ids"])
    symbolic = OnnxCausalLM(tmp_path / "model.onnx")
    assert (symbolic.kv_heads, symbolic.head_dim) == (config["model"]["decoder"]["num_key_value_heads"],
                                                      config["model"]["decoder"]["head_size"])
    assert list(generate_ids(symbolic, prompt, 12)) == list(generate_ids(OnnxCausalLM(folder), prompt, 12))
    (tmp_path / "genai_config.json").unlink()
    with pytest.raises(BenchError, match="symbolic"):
        OnnxCausalLM(tmp_path / "model.onnx")


def test_int4_in_place_decode_equals_its_reference(tiny_gpt2, tmp_path):
    result = export_onnx(tiny_gpt2, tmp_path / "e", precisions=("int4",), accuracy_level=0)
    prompt = np.array(tiny_gpt2.tokenizer("Edge boards decode")["input_ids"])
    reference = quantized_reference(tiny_gpt2.model, WeightFormat("int4", accuracy_level=0))
    assert result["files"]["int4"]["file"] == "model_int4.onnx"
    assert list(generate_ids(OnnxCausalLM(tmp_path / "e"), prompt, 24)) == torch_greedy(reference, prompt, 24)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_int4_with_zero_points_decodes_as_its_reference(family, tiny_gpt2, tiny_llama, tmp_path):
    """Zero points reach MatMulNBits and GatherBlockQuantized (GPT-2's tied table): the file computes
    exactly the PyTorch model with its own dequantized weights, and toolkit.quant fakes those weights."""
    from toolkit.quant import fake_quant

    loaded = tiny_gpt2 if family == "gpt2" else tiny_llama
    result = export_onnx(loaded, tmp_path / "e", precisions=("int4",), accuracy_level=0, symmetric=False)
    proto = onnx.load(str(tmp_path / "e" / "model_int4.onnx"))
    nbits = [n for n in proto.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert nbits and all(len(n.input) >= 4 and "zero_points" in n.input[3] for n in nbits)
    reference = quantized_reference(loaded.model, WeightFormat("int4", accuracy_level=0, symmetric=False))
    head = loaded.model.get_output_embeddings().weight
    torch.testing.assert_close(reference.get_output_embeddings().weight, fake_quant(head, 4, 32, symmetric=False),
                               rtol=0, atol=0)
    prompt = np.array(loaded.tokenizer("Edge boards decode")["input_ids"])
    assert result["files"]["int4"]["parity"]["greedy_tokens_equal"] == 32
    assert list(generate_ids(OnnxCausalLM(tmp_path / "e"), prompt, 24)) == torch_greedy(reference, prompt, 24)


def test_onnxruntime_genai_generates_pytorchs_greedy_tokens(tiny, tmp_path_factory):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed here")
    tiny, folder, _ = exported(tiny, "compressed", tmp_path_factory)
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    text = "The capital of France is Paris. Héllo ünïcode — 東京!"
    ids = list(tokenizer.encode(text))
    assert ids == tiny.tokenizer(text)["input_ids"] and tokenizer.decode(ids) == text  # round trip
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 16, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    assert tokens == torch_greedy(tiny.model, np.array(ids), 16)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["filename"] == "model.onnx" and config["search"]["past_present_share_buffer"]


def test_a_re_densified_graph_is_refused(tiny_gpt2):
    """A dense graph claimed to be the compressed model: the element check must refuse it."""
    dense = build_decoder(tiny_gpt2.model, "gpt2", WeightFormat("int4"))
    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:ratio=4"})
    with pytest.raises(TensoredgeError, match="re-densified"):
        check_elements_kept(dense, count_parameters(tiny_gpt2.model)["total"]["params"])


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


def test_fp16_and_ort_format(tiny_gpt2, tmp_path_factory):
    tiny_gpt2, folder, result = exported(tiny_gpt2, "dense", tmp_path_factory)
    ids = np.random.default_rng(0).integers(0, 50257, size=(1, 12), dtype=np.int64)
    expected = torch_logits(tiny_gpt2.model, ids)
    for name in ("model_fp16.onnx", "model.ort", "model_int4.ort", "model_fp16.ort"):
        lm = OnnxCausalLM(folder / name)
        got = lm.logits(ids)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert list(generate_ids(lm, ids[0], 3))  # the cached decode runs
    np.testing.assert_allclose(OnnxCausalLM(folder / "model.ort").logits(ids), expected, atol=1e-4, rtol=1e-4)
    config = (folder / "required_operators.config").read_text()
    assert "com.microsoft;1;" in config and "MatMulNBits" in config and "GroupQueryAttention" in config


def test_bad_options_are_one_line(tiny_gpt2, tmp_path):
    with pytest.raises(TensoredgeError, match="unknown precision"):
        export_onnx(tiny_gpt2, tmp_path / "e", precisions=("int3",))
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(TensoredgeError, match="takes a directory"):
        export_onnx(tiny_gpt2, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old"


def test_block_padding_of_small_ranks_is_not_re_densification(tiny_gpt2, tmp_path):
    """MatMulNBits pads K to its block size (32): a rank-7 factor must count as its 7 x N elements."""
    compress_(tiny_gpt2.model, "gpt2", {"mlp": "svd:rank=7"})
    result = export_onnx(tiny_gpt2, tmp_path / "m", precisions=("int4",), accuracy_level=0)
    params = count_parameters(tiny_gpt2.model)["total"]["params"]
    assert params <= result["files"]["int4"]["graph_weight_elements"] <= params * 1.001


class _Shifted(torch.nn.Module):
    """`model` with every logit raised by the same amount: the same next-token distribution."""

    def __init__(self, model, shift: float):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits = out.logits + self.shift
        return out


def test_quantized_gate_reads_text_prompts_ignores_a_common_offset_and_refuses_wrong_weights(tiny_llama, tmp_path_factory):
    """The int4 gate measures on WikiText-2 valid prompts where the tokenizer fits, with logits centred per
    position: a model differing only by a constant offset agrees as well as the model itself (the raw
    relative error moved with the offset and refused a healed SmolLM2 file that was in fact closer), while
    a file whose weights are not the model's is refused."""
    from exporters.onnx_parity import QUANTIZED_LIMITS, agreement, check_agreement, text_prompts

    loaded, folder, result = exported(tiny_llama, "dense", tmp_path_factory)
    assert result["files"]["int4"]["prompts"] == "WikiText-2 valid"
    vocab = loaded.model.config.vocab_size
    prompts = text_prompts(loaded.tokenizer, vocab)
    assert prompts.shape == (2, 33) and text_prompts(loaded.tokenizer, 1000) is None  # ids beyond a small vocab
    lm = OnnxCausalLM(str(folder / "model_int4.onnx"), threads=1)
    reference = quantized_reference(loaded.model, WeightFormat("int4"))
    own = agreement(lm, reference, vocab, prompts)["relative_logit_error"]
    shifted = agreement(lm, _Shifted(reference, 40.0), vocab, prompts)["relative_logit_error"]
    assert own <= QUANTIZED_LIMITS["relative_logit_error"] and abs(shifted - own) < 1e-4
    wrong = copy.deepcopy(reference)
    with torch.no_grad():
        for layer in wrong.model.layers:
            layer.mlp.down_proj.weight.mul_(-1.0)
    with pytest.raises(TensoredgeError, match="too far"):
        check_agreement(lm, wrong, vocab, QUANTIZED_LIMITS, "int4", prompts=prompts)
