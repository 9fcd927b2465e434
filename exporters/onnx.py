"""ONNX export with a KV cache that keeps the factors and proves it computes what PyTorch computes.

An export is a directory: `model.onnx` (fp32), optionally `model_int8.onnx` / `model_fp16.onnx`
and their `.ort` forms with `required_operators.config`, plus `config.json`, the tokenizer files
and `export.json` (what was checked). The graph uses Optimum's names (see device_bench/onnx_lm.py)
and serves both prefill (past length 0) and one-token decode. It is exported with torch.onnx's
dynamo exporter and no graph optimisation: constant folding would multiply factors back into
dense tables, which `check_factors_kept` would refuse.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable

import torch

from device_bench.errors import BenchError
from device_bench.onnx_lm import OnnxCausalLM
from exporters.onnx_graph import (check_elements_kept, check_factors_kept, fold_weight_transposes,
                                  graph_weight_bytes)
from exporters.onnx_parity import FLOAT64_SLACK, check_agreement, check_parity
from exporters.onnx_precision import FILE_NAMES, LIMITS, PRECISIONS, convert_fp16, int8_weight_summary, quantize_int8
from models.base import LoadedModel
from models.tokenizer_files import save_tokenizer
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

FORMAT = "tensoredge.onnx/2"
SAMPLE = {"batch": 2, "seq": 3, "past": 4}  # trace shapes: none 0 or 1, so no axis is specialised


class CausalLMWithCache(torch.nn.Module):
    """(input_ids, attention_mask, position_ids, past k/v per layer) -> (logits, present k/v per layer)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (key, value) in enumerate(past):
            cache.update(key, value, layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def kv_shape(config) -> tuple[int, int, int]:
    """Layers, KV heads and head size of a GPT-2 or Llama config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    pairs = [(i, kv) for i in range(layers) for kv in ("key", "value")]
    return (["input_ids", "attention_mask", "position_ids", *[f"past_key_values.{i}.{kv}" for i, kv in pairs]],
            ["logits", *[f"present.{i}.{kv}" for i, kv in pairs]])


@contextlib.contextmanager
def quiet_exporter():
    """Silence torch.onnx's progress prints and warnings that say nothing about our model."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def trace_to_onnx(model: torch.nn.Module, path: Path, opset: int) -> None:
    """torch.onnx dynamo export with dynamic batch, sequence and past axes; no optimisation."""
    layers, kv_heads, head_dim = kv_shape(model.config)
    b, s, p = SAMPLE["batch"], SAMPLE["seq"], SAMPLE["past"]
    vocab = model.config.vocab_size
    sample = (torch.randint(0, vocab, (b, s)), torch.ones(b, p + s, dtype=torch.int64),
              torch.arange(p, p + s).expand(b, s).contiguous(),
              [(torch.randn(b, kv_heads, p, head_dim), torch.randn(b, kv_heads, p, head_dim)) for _ in range(layers)])
    Dim = torch.export.Dim
    batch, seq, past = Dim("batch_size", min=1, max=1024), Dim("sequence_length", min=1, max=8192), \
        Dim("past_sequence_length", min=0, max=8192)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: Dim.AUTO},
              "position_ids": {0: batch, 1: seq}, "past": [({0: batch, 2: past}, {0: batch, 2: past})] * layers}
    inputs, outputs = io_names(layers)
    with quiet_exporter():
        torch.onnx.export(CausalLMWithCache(model).eval(), sample, str(path), input_names=inputs,
                          output_names=outputs, dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                          external_data=False, optimize=False)  # the optimiser folds factor products


def write_metadata(proto, loaded: LoadedModel) -> None:
    config = loaded.model.config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    layers, kv_heads, head_dim = kv_shape(config)
    for key, value in {"vocab_size": config.vocab_size, "family": loaded.family, "source": loaded.source,
                       "producer": "tensoredge", "format": FORMAT, "num_layers": layers, "kv_heads": kv_heads,
                       "head_dim": head_dim, "eos_token_ids": ",".join(str(e) for e in eos if e is not None)}.items():
        proto.metadata_props.add(key=key, value=str(value))


def tied_table_elements(model: torch.nn.Module) -> int:
    """Elements of a dense embedding tied to the LM head, which the int8 file stores twice.

    MatMulNBits packs the head's copy into its own 8-bit blocks; the lookup (Gather) keeps a
    separate 8-bit table. A factorized (TT) embedding has no dense table, so nothing is allowed.
    """
    embedding = model.get_input_embeddings()
    tied = getattr(model.config, "tie_word_embeddings", False)
    return embedding.weight.numel() if tied and isinstance(embedding, torch.nn.Embedding) else 0


def open_lm(path: Path) -> OnnxCausalLM:
    try:
        return OnnxCausalLM(path)
    except BenchError as e:
        raise TensoredgeError(str(e)) from None


def export_onnx(
    loaded: LoadedModel,
    out_dir: str | Path,
    precisions: tuple[str, ...] = ("fp32",),
    ort_format: bool = False,
    reference: str | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    float64_slack: float = FLOAT64_SLACK,
    opset: int = 18,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Export `loaded` into the directory `out_dir`, verify every file, and only then move it into place.

    fp32 `model.onnx` is always written (the variants are made from it); `precisions` adds int8/fp16.
    `reference` (recorded in export.json) is the dense model `tensoredge eval` compares with.
    Logits must be within atol + rtol*|logit| of PyTorch fp32, or else no further from float64
    PyTorch than `float64_slack` times PyTorch fp32 is (see onnx_parity).
    """
    import onnx

    say = progress or (lambda _msg: None)
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise TensoredgeError(f"unknown precision {sorted(unknown)}: choose from {', '.join(PRECISIONS)}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise TensoredgeError(f"{out_dir} is a file: `export onnx --out` takes a directory (model.onnx, config, "
                              "tokenizer are written inside); give a new or existing directory")
    model, vocab = loaded.model, loaded.model.config.vocab_size
    counts = count_parameters(model)["total"]
    result = {"format": FORMAT, "path": str(out_dir), "model": loaded.name, "family": loaded.family,
              "reference": reference, "eval_context": loaded.eval_context,
              "model_param_bytes": counts["bytes"], "model_params": counts["params"], "kv_cache": True,
              "exporter": f"torch.onnx dynamo (torch {torch.__version__}), opset {opset}, optimize=False",
              "files": {}}
    with atomic_path(out_dir, directory=True, kind="onnx") as tmp:  # see device_bench.files
        tmp.mkdir(parents=True, exist_ok=True)
        fp32 = tmp / FILE_NAMES["fp32"]
        say(f"exporting ONNX with KV cache (opset {opset})")
        trace_to_onnx(model, fp32, opset)
        proto = onnx.load(str(fp32))
        folded = fold_weight_transposes(proto)
        weights = check_factors_kept(proto, counts["bytes"])
        write_metadata(proto, loaded)
        onnx.save(proto, str(fp32))
        say("checking ONNX Runtime against PyTorch (logits, cached decode, 32 greedy tokens)")
        parity = check_parity(open_lm(fp32), model, vocab, atol, rtol, float64_slack)
        result["files"]["fp32"] = {"file": fp32.name, "file_bytes": fp32.stat().st_size, "graph_weight_bytes": weights,
                                   "folded_weight_transposes": folded, "parity": parity}
        for precision in [p for p in PRECISIONS if p in precisions and p != "fp32"]:
            path = tmp / FILE_NAMES[precision]
            say(f"{precision}: converting and checking against PyTorch")
            (quantize_int8 if precision == "int8" else convert_fp16)(fp32, path)
            variant = onnx.load(str(path))
            twice = tied_table_elements(model) if precision == "int8" else 0
            entry = {"file": path.name, "file_bytes": path.stat().st_size,
                     "graph_weight_bytes": graph_weight_bytes(variant),
                     "graph_weight_elements": check_elements_kept(variant, counts["params"] + twice),
                     "tied_table_stored_twice": twice,
                     "limits": LIMITS[precision],
                     "agreement": check_agreement(open_lm(path), model, vocab, LIMITS[precision], precision)}
            if precision == "int8":
                entry["quantized"] = int8_weight_summary(path)
            result["files"][precision] = entry
        if ort_format:
            say("converting to ORT format (.ort) for mobile / reduced builds")
            result["ort"] = ort_files(tmp, [tmp / result["files"][p]["file"] for p in result["files"]], model, vocab,
                                      atol, rtol)
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_tokenizer(loaded.tokenizer, tmp)  # no truncation or padding carried into the export
        (tmp / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    result["file_bytes"] = sum(e["file_bytes"] for e in result["files"].values())
    return result


def ort_files(out_dir: Path, onnx_files: list[Path], model: torch.nn.Module, vocab: int,
              atol: float, rtol: float) -> dict:
    """Convert to .ort and check each loads and gives the logits of the .onnx it came from."""
    import numpy as np

    from exporters.onnx_mobile import convert_to_ort

    converted = convert_to_ort(onnx_files, out_dir)
    ids = np.random.default_rng(13).integers(0, vocab, size=(1, 9), dtype=np.int64)
    sizes = {}
    for onnx_name, ort_name in converted["files"].items():
        same = np.abs(open_lm(out_dir / ort_name).logits(ids) - open_lm(out_dir / onnx_name).logits(ids)).max()
        if same > atol:
            raise TensoredgeError(f"{ort_name} gives logits {same:.2e} away from {onnx_name}: not written")
        sizes[ort_name] = {"file_bytes": (out_dir / ort_name).stat().st_size, "max_abs_diff_vs_onnx": float(same)}
    return {**converted, "files": sizes}
