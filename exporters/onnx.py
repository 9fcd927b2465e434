"""ONNX export: a lean decoder graph of ONNX Runtime's fused ops that keeps the factors, checked
against PyTorch before anything is written.

An export is a directory: one model file per precision (`model.onnx` fp32, `model_fp16.onnx`,
`model_int8.onnx`, `model_int4.onnx`; optionally their `.ort` forms and
`required_operators.config`), `genai_config.json` for ONNX Runtime GenAI (pointing at the first
precision asked for), `config.json`, the tokenizer files and `export.json` (what was checked).
The graph is written by exporters/onnx_builder, one file per family, as GenAI's model builder
does; the interface is GenAI's: input_ids, attention_mask, past_key_values.* -> logits, present.*.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import onnx
import torch

from device_bench.errors import BenchError
from device_bench.onnx_lm import OnnxCausalLM
from exporters.onnx_builder import WeightFormat, build_decoder, shape_of
from exporters.onnx_builder.genai import write_genai_config
from exporters.onnx_builder.modules import extra_elements
from exporters.onnx_builder.reference import quantized_reference
from exporters.onnx_graph import check_elements_kept, graph_weight_bytes, op_counts
from exporters.onnx_parity import FLOAT64_SLACK, check_agreement, check_parity, check_quantized, text_prompts
from models.base import LoadedModel
from models.tokenizer_files import save_tokenizer
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

FORMAT = "tensoredge.onnx/3"
PRECISIONS = ("fp32", "fp16", "int8", "int4")
FILE_NAMES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}
FP16_LIMITS = {"relative_logit_error": 0.01, "top1_agreement": 0.95, "cached_vs_full_relative": 0.01}


def metadata(loaded: LoadedModel, fmt: WeightFormat) -> dict[str, str]:
    config = loaded.model.config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    shape = shape_of(loaded.model, loaded.family)
    return {"vocab_size": config.vocab_size, "family": loaded.family, "source": loaded.source,
            "producer": "tensoredge", "format": FORMAT, "num_layers": shape.layers, "kv_heads": shape.kv_heads,
            "head_dim": shape.head_dim, "max_positions": shape.max_positions, "kv_cache": "gqa-shared-buffer",
            "precision": fmt.name, "block_size": fmt.block_size, "accuracy_level": fmt.accuracy_level,
            "zero_points": str(not fmt.symmetric).lower(), "eos_token_ids": ",".join(str(e) for e in eos if e is not None)}


def open_lm(path: Path) -> OnnxCausalLM:
    try:
        return OnnxCausalLM(path)
    except BenchError as e:
        raise TensoredgeError(str(e)) from None


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """One file while it fits protobuf's 2 GB; weights in `NAME.data` beside it beyond that."""
    large = proto.ByteSize() > 1_800_000_000
    onnx.save(proto, str(path), save_as_external_data=large, location=f"{path.name}.data" if large else None)


def export_onnx(
    loaded: LoadedModel,
    out_dir: str | Path,
    precisions: tuple[str, ...] = ("fp32",),
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    ort_format: bool = False,
    reference: str | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    float64_slack: float = FLOAT64_SLACK,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Build, check and write one model file per precision into the directory `out_dir`.

    fp32 passes the parity gate against PyTorch (logits within atol + rtol*|logit|, or no further
    from float64 PyTorch than `float64_slack` times PyTorch fp32 is; cached decode; 32 greedy
    tokens). int8/int4 pass it against PyTorch computing with the very weights the file holds
    (reference.py), within the limits of MatMulNBits' activation quantization at
    `accuracy_level`; their distance from the float model is recorded. `reference` (recorded) is
    the dense model `tensoredge eval` compares with.
    """
    say = progress or (lambda _msg: None)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise TensoredgeError(f"unknown precision {unknown}: choose from {', '.join(PRECISIONS)}")
    formats = [WeightFormat(p, block_size, accuracy_level, symmetric) for p in dict.fromkeys(precisions)]
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise TensoredgeError(f"{out_dir} is a file: `export onnx --out` takes a directory (model files, config, "
                              "tokenizer are written inside); give a new or existing directory")
    model, vocab = loaded.model, loaded.model.config.vocab_size
    prompts = text_prompts(loaded.tokenizer, vocab) if any(f.name != "fp32" for f in formats) else None
    counts = count_parameters(model)["total"]
    result = {"format": FORMAT, "path": str(out_dir), "model": loaded.name, "family": loaded.family,
              "reference": reference, "eval_context": loaded.eval_context,
              "model_param_bytes": counts["bytes"], "model_params": counts["params"], "kv_cache": True,
              "exporter": f"tensoredge onnx_builder (fused ONNX Runtime ops), torch {torch.__version__}",
              "files": {}}
    with atomic_path(out_dir, directory=True, kind="onnx") as tmp:  # see device_bench.files
        tmp.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = tmp / FILE_NAMES[fmt.name]
            say(f"{fmt.name}: building the decoder graph")
            proto = build_decoder(model, loaded.family, fmt, metadata(loaded, fmt))
            entry = {"file": path.name, "weights": asdict(fmt), "nodes": len(proto.graph.node),
                     "ops": op_counts(proto), "graph_weight_bytes": graph_weight_bytes(proto),
                     "graph_weight_elements": check_elements_kept(proto, counts["params"] + extra_elements(model, fmt))}
            save_model(proto, path)
            del proto
            entry["file_bytes"] = sum(f.stat().st_size for f in tmp.glob(f"{path.name}*"))
            lm = open_lm(path)
            if fmt.name == "fp32":
                say("fp32: checking ONNX Runtime against PyTorch (logits, cached decode, 32 greedy tokens)")
                entry["parity"] = check_parity(lm, model, vocab, atol, rtol, float64_slack)
            elif fmt.name == "fp16":
                say("fp16: checking agreement with PyTorch fp32")
                entry["limits"] = FP16_LIMITS
                entry["agreement"] = check_agreement(lm, model, vocab, FP16_LIMITS, "fp16", prompts=prompts)
                entry["prompts"] = "random tokens" if prompts is None else "WikiText-2 valid"
            else:
                say(f"{fmt.name}: checking ONNX Runtime against PyTorch with the file's own quantized weights")
                entry |= check_quantized(lm, quantized_reference(model, fmt), model, vocab, fmt, atol, rtol,
                                         float64_slack, prompts)
            result["files"][fmt.name] = entry
        if ort_format:
            say("converting to ORT format (.ort) for mobile / reduced builds")
            result["ort"] = ort_files(tmp, [tmp / result["files"][p]["file"] for p in result["files"]], vocab, atol)
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_tokenizer(loaded.tokenizer, tmp)  # no truncation or padding carried into the export
        write_genai_config(tmp, loaded, result["files"][formats[0].name]["file"])
        (tmp / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    result["file_bytes"] = sum(e["file_bytes"] for e in result["files"].values())
    return result


def ort_files(out_dir: Path, onnx_files: list[Path], vocab: int, atol: float) -> dict:
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
