"""GGUF export for llama.cpp (GPT-2 and Llama architectures), verified by llama.cpp itself.

llama.cpp only runs its fixed architectures, so factorized layers are materialised into dense
tensors here: the file is as large as a dense model of the same type.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from device_bench.gguf_weights import TYPE_NAMES, quantized, weight_types
from device_bench.files import gguf_output_key
from models.base import LoadedModel
from models.gguf_file import FILE_KEYS
from toolkit.compress import factorized_modules
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

ARCHES = {"gpt2": "GPT2", "llama": "LLAMA"}
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
VERIFY_PROMPT, VERIFY_STEPS = 16, 32
# A quantized file must still agree with PyTorch on most greedy tokens, or it is broken.
MIN_AGREEMENT = {"f32": 1.0, "f16": 0.75, "q8_0": 0.5, "q5_1": 0.25, "q5_0": 0.25, "q4_1": 0.25, "q4_0": 0.25,
                 "q6_k": 0.5, "q5_k_m": 0.25, "q4_k_m": 0.25, "q4_k_s": 0.25, "q3_k_m": 0.25, "iq4_nl": 0.25}
# k-quants and IQ4_NL: llama.cpp's own quantizer (llama_model_quantize) writes them from an f32 GGUF of ours,
# with its own per-tensor mix (and its fallbacks where a row is not a multiple of 256)
LLAMA_QUANTIZED = ("q6_k", "q5_k_m", "q4_k_m", "q4_k_s", "q3_k_m", "iq4_nl")
GGUF_TYPES = (*TYPE_NAMES, *LLAMA_QUANTIZED)


def hf_tensors(model: torch.nn.Module, materialize: bool = True) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights in their original layout; factorized modules materialised, or
    (materialize=False) left out but for their biases.

    A head that shares the embedding's factors is left out: llama.cpp then ties output to token_embd.
    """
    factorized = factorized_modules(model)
    state = {}
    for path, module in factorized.items():
        if module.ties_to:
            continue
        if materialize:
            state[f"{path}.weight"] = module.dense_weight()
        if (bias := module.dense_bias()) is not None:
            state[f"{path}.bias"] = bias
    for name, param in model.named_parameters(remove_duplicate=True):
        if not any(name.startswith(f"{path}.") for path in factorized):
            state[name] = param
    return {name: t.detach().float() for name, t in state.items()}


def unpermute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensor(name: str, tensor: torch.Tensor, family: str, config) -> np.ndarray:
    """One weight in llama.cpp's layout."""
    array = tensor.numpy()
    if family == "gpt2" and name.endswith(CONV1D):
        array = array.T  # GPT-2's Conv1D stores (in, out)
    if family == "llama" and name.endswith("self_attn.q_proj.weight"):
        array = unpermute_rope(array, config.num_attention_heads)
    if family == "llama" and name.endswith("self_attn.k_proj.weight"):
        array = unpermute_rope(array, config.num_key_value_heads)
    return np.ascontiguousarray(array, dtype=np.float32)


def add_hparams(writer, family: str, config) -> None:
    if family == "gpt2":
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
    else:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)


def add_tokenizer(writer, loaded: LoadedModel) -> None:
    """Byte-level BPE tokens, merges and special ids, read from the model's own tokenizer.json."""
    import gguf

    vocab_size = loaded.model.config.vocab_size
    with tempfile.TemporaryDirectory() as folder:
        loaded.tokenizer.save_pretrained(folder)
        path = Path(folder) / "tokenizer.json"
        spec = json.loads(path.read_text()) if path.is_file() else {}
        special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size)
    bpe = spec.get("model", {})
    if bpe.get("type") != "BPE":
        raise TensoredgeError("GGUF export needs a byte-level BPE tokenizer (tokenizer.json of type BPE)")
    ids = dict(bpe["vocab"])
    control = set()
    for added in spec.get("added_tokens", []):
        ids.setdefault(added["content"], added["id"])
        if added.get("special"):
            control.add(added["id"])
    by_id = {i: text for text, i in ids.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]  # rows beyond the tokenizer: padding
    types = [gguf.TokenType.CONTROL if i in control else
             gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED for i in range(vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(loaded.gguf_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])])
    special.add_to_gguf(writer, quiet=True)


def verify_gguf(path: Path, loaded: LoadedModel, weight_type: str, lora: Path | None = None,
                min_agreement: float | None = None) -> dict:
    """Greedy-decode with llama.cpp (with the LoRA GGUF `lora` applied, if given) and compare every
    step's logits with PyTorch's."""
    from device_bench.runtimes.llama_cpp import LlamaCppRuntime

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, loaded.model.config.vocab_size, (VERIFY_PROMPT,), generator=generator)
    runtime = LlamaCppRuntime(str(path), threads=torch.get_num_threads(), max_tokens=VERIFY_PROMPT + VERIFY_STEPS,
                              f32_cache=True, lora_path=str(lora) if lora else None)
    got = [runtime.prefill(prompt.numpy())]
    tokens = []
    for _ in range(VERIFY_STEPS - 1):
        tokens.append(int(got[-1].argmax()))
        got.append(runtime.decode_step(tokens[-1]))
    del runtime
    sequence = torch.cat([prompt, torch.tensor(tokens, dtype=prompt.dtype)])[None]
    with torch.inference_mode():
        expected = loaded.model(input_ids=sequence, use_cache=False).logits[0, VERIFY_PROMPT - 1 :].numpy()
    got_array = np.stack(got)
    agreement = float((got_array.argmax(-1) == expected.argmax(-1)).mean())
    diff = float(np.abs(got_array - expected).max())
    scale = float(np.abs(expected).max())
    needed = MIN_AGREEMENT[weight_type] if min_agreement is None else min_agreement
    if agreement < needed:
        raise TensoredgeError(
            f"llama.cpp agrees with PyTorch on {agreement:.0%} of next tokens "
            f"(needs {needed:.0%} for {weight_type}; max logit diff {diff:.3g}): not written"
        )
    return {"top1_agreement": agreement, "max_abs_logit_diff": diff, "max_abs_logit": scale, "steps": VERIFY_STEPS}


def tensor_map(loaded: LoadedModel):
    """gguf-py's Hugging Face -> llama.cpp tensor-name map for this model."""
    import gguf

    arch = gguf.MODEL_ARCH[ARCHES[loaded.family]]
    return gguf.get_tensor_name_map(arch, loaded.model.config.num_hidden_layers)


def gguf_name_of(names, hf_name: str, family: str) -> str:
    gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if gguf_name is None:
        raise TensoredgeError(f"no llama.cpp tensor for '{hf_name}' in {family}: cannot export")
    return gguf_name


def add_weight(writer, name: str, array: np.ndarray, qtype) -> bool:
    """Add one tensor as `qtype` (f32 where it cannot be); True when it had to stay f32."""
    data, kind = quantized(array, qtype)
    writer.add_tensor(name, data, raw_dtype=kind)
    return kind != qtype


def new_writer(path: Path, loaded: LoadedModel, weight_type: str, arch_name: str | None = None):
    """A GGUFWriter with the model's llama.cpp hyper-parameters and tokenizer already added.

    `arch_name` overrides general.architecture (the factorized container); the hyper-parameter
    keys keep the llama.cpp architecture's prefix so the container can be materialised as is.
    """
    import gguf

    if weight_type not in weight_types():
        raise TensoredgeError(f"unknown GGUF type '{weight_type}': choose one of {', '.join(TYPE_NAMES)}")
    target = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[ARCHES[loaded.family]]]
    writer = gguf.GGUFWriter(str(path), arch_name or target)
    gguf_output_key(writer, "container" if arch_name else "gguf")
    writer.arch = target  # hyper-parameter keys are "<llama.cpp arch>.<key>"
    writer.add_name(loaded.name)
    add_source_metadata(writer, loaded.metadata)
    add_provenance(writer, loaded)
    writer.add_file_type(weight_types()[weight_type][1])
    if weight_type not in ("f32", "f16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hparams(writer, loaded.family, loaded.model.config)
    add_tokenizer(writer, loaded)
    return writer


def add_source_metadata(writer, metadata: dict) -> None:
    """The source model's general.* keys (license, organization, basename, size_label, languages...):
    a model's license travels with it. Types follow the values (strings, string lists, integers)."""
    import gguf

    T = gguf.GGUFValueType

    def kind(value) -> "gguf.GGUFValueType | None":
        if isinstance(value, bool):
            return T.BOOL
        if isinstance(value, int):
            return T.UINT32 if 0 <= value < 2**32 else T.INT64
        if isinstance(value, float):
            return T.FLOAT32
        if isinstance(value, str):
            return T.STRING
        return None

    for key, value in metadata.items():
        if not key.startswith("general.") or key in FILE_KEYS:
            continue
        if isinstance(value, list):
            if value and kind(value[0]) is not None and all(kind(v) == kind(value[0]) for v in value):
                writer.add_key_value(key, value, T.ARRAY, sub_type=kind(value[0]))
        elif kind(value) is not None:
            writer.add_key_value(key, value, kind(value))


def add_provenance(writer, loaded: LoadedModel) -> None:
    """What made this file: tensoredge's version, the source and the compression plan."""
    writer.add_string("tensoredge.version", tool_version())
    writer.add_string("tensoredge.source", loaded.source)
    if loaded.plan:
        writer.add_string("tensoredge.plan", json.dumps(loaded.plan, sort_keys=True))


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"tensoredge {version('tensoredge')}"
    except PackageNotFoundError:
        return "tensoredge (source tree)"


def add_model_tensors(writer, loaded: LoadedModel, qtype, materialize: bool = True) -> int:
    """Add the model's tensors in llama.cpp's names and layout (see hf_tensors); returns how many stayed f32."""
    names, kept_f32 = tensor_map(loaded), 0
    for name, tensor in hf_tensors(loaded.model, materialize).items():
        array = gguf_tensor(name, tensor, loaded.family, loaded.model.config)
        kept_f32 += add_weight(writer, gguf_name_of(names, name, loaded.family), array, qtype)
    return kept_f32


def finish_writer(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(
    loaded: LoadedModel,
    path: str | Path,
    weight_type: str = "f32",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write `loaded` as a llama.cpp GGUF of `weight_type`, verify it, then move it into place."""
    say = progress or (lambda _msg: None)
    if weight_type not in GGUF_TYPES:
        raise TensoredgeError(f"unknown GGUF type '{weight_type}': choose one of {', '.join(GGUF_TYPES)}")
    with atomic_path(path, kind="gguf") as tmp:
        if weight_type in LLAMA_QUANTIZED:
            f32 = Path(tmp).with_name(Path(tmp).name + ".f32")  # in the same temporary folder: removed on failure
            writer = new_writer(f32, loaded, "f32")
            kept_f32 = add_model_tensors(writer, loaded, weight_types()["f32"][0])
            say("writing GGUF (f32, for llama.cpp's quantizer)")
            finish_writer(writer)
            say(f"quantizing to {weight_type.upper()} with llama.cpp")
            llama_quantize(f32, tmp, weight_type)
            f32.unlink()  # only the quantized file is kept
        else:
            writer = new_writer(tmp, loaded, weight_type)
            kept_f32 = add_model_tensors(writer, loaded, weight_types()[weight_type][0])
            say(f"writing GGUF ({weight_type})")
            finish_writer(writer)
        say("checking llama.cpp against PyTorch")
        check = verify_gguf(tmp, loaded, weight_type)
    return {"path": str(path), "file_bytes": Path(path).stat().st_size, "weight_type": weight_type,
            "tensors_kept_f32": kept_f32, **check}


def llama_quantize(source: Path, target: Path, weight_type: str) -> None:
    """llama.cpp's quantizer (through llama-cpp-python): `source` f32 GGUF -> `target` of `weight_type`."""
    import ctypes
    import os

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{weight_type.upper()}")
    params.nthread = torch.get_num_threads()
    saved = os.dup(2)  # llama.cpp reports every tensor on stderr
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    if status != 0:
        raise TensoredgeError(f"llama.cpp could not quantize to {weight_type.upper()} (status {status}): "
                              "try q4_0, q4_1, q5_1 or q8_0, which tensoredge writes itself")
