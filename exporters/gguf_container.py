"""The factorized container: a compressed model's factors in one GGUF under our own architecture.

llama.cpp refuses the container (unknown architecture), which is the point: it is the small file
to ship, and `tensoredge materialize` (torch-free, device_bench.materialize) turns it into a dense
llama.cpp GGUF on the device. Layout:

- KV `general.architecture = "tensoredge"`, `tensoredge.target_architecture`, the target's
  llama.cpp hyper-parameters and tokenizer, `tensoredge.factors` (JSON: llama.cpp tensor name ->
  how to rebuild it).
- Tensors: every non-factorized tensor already in llama.cpp's name, layout and weight type;
  factors as `<name>.tt.<k>` (per-token TT cores), `<name>.tier_of` and `<name>.tier<t>.tt.<k>` (TT rows in
  tiers of their own ranks) or `<name>.down` / `<name>.up` (low rank), in the
  container's type where their rows fit its blocks, else f16 (f32 in an f32 container).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

from exporters.gguf import (add_model_tensors, finish_writer, gguf_name_of, new_writer, tensor_map,
                            unpermute_rope, verify_gguf)
from device_bench.gguf_weights import quantized, weight_types
from models.base import LoadedModel
from toolkit.compress import factorized_modules
from toolkit.compress.low_rank import LowRankLinear
from toolkit.compress.tt_embedding import TieredTTEmbedding, TTEmbedding
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

CONTAINER_ARCH = "tensoredge"


def factor_arrays(path: str, module, loaded: LoadedModel) -> tuple[dict, dict]:
    """({tensor suffix: float32 array}, rebuild record) of one factorized module, in llama.cpp layout."""
    config = loaded.model.config
    if isinstance(module, TTEmbedding):
        cores = {f"tt.{k}": core.detach().numpy() for k, core in enumerate(module.cores)}
        return cores, {"kind": "tt", "cores": len(cores), "dim": module.dim}
    if isinstance(module, TieredTTEmbedding):  # the tier map as floats (0, 1: exact in f16)
        arrays = {"tier_of": module.tier_of.detach().numpy().astype("float32")}
        for t, cores in enumerate(module.tiers):
            arrays |= {f"tier{t}.tt.{k}": core.detach().numpy() for k, core in enumerate(cores)}
        return arrays, {"kind": "tt-tiered", "tiers": [len(cores) for cores in module.tiers], "dim": module.dim}
    if isinstance(module, LowRankLinear):
        up = module.up.weight.detach().numpy()  # (out, rank): llama.cpp's weight is up @ down
        if loaded.family == "llama" and path.endswith("self_attn.q_proj"):
            up = unpermute_rope(up, config.num_attention_heads)
        if loaded.family == "llama" and path.endswith("self_attn.k_proj"):
            up = unpermute_rope(up, config.num_key_value_heads)
        return {"up": up, "down": module.down.weight.detach().numpy()}, {"kind": "low_rank"}
    raise TensoredgeError(f"the container cannot hold {type(module).__name__} at {path} yet")


def factor_data(array, qtype) -> tuple:
    """(data, type) for a factor: the container's type where rows fit its blocks, else f16
    (f32 when the container is f32)."""
    import gguf

    data, kind = quantized(array, qtype)
    if kind == gguf.GGMLQuantizationType.F32 and qtype != kind:
        data, kind = array.astype("float16"), gguf.GGMLQuantizationType.F16
    return data, kind


def export_container(
    loaded: LoadedModel,
    path: str | Path,
    weight_type: str = "f32",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write the container; before it is kept, materialise it and check llama.cpp against PyTorch."""
    from device_bench.materialize import materialize

    say = progress or (lambda _msg: None)
    names = tensor_map(loaded)
    with atomic_path(path, kind="container") as tmp:
        writer = new_writer(tmp, loaded, weight_type, arch_name=CONTAINER_ARCH)
        writer.add_string(f"{CONTAINER_ARCH}.target_architecture", writer.arch)
        writer.add_string(f"{CONTAINER_ARCH}.weight_type", weight_type)
        qtype = weight_types()[weight_type][0]
        add_model_tensors(writer, loaded, qtype, materialize=False)
        factors = {}
        for module_path, module in factorized_modules(loaded.model).items():
            if module.ties_to:
                continue
            target = gguf_name_of(names, f"{module_path}.weight", loaded.family)
            arrays, record = factor_arrays(module_path, module, loaded)
            for suffix, array in arrays.items():
                data, kind = factor_data(array, qtype)
                writer.add_tensor(f"{target}.{suffix}", data, raw_dtype=kind)
            factors[target] = record
        writer.add_string(f"{CONTAINER_ARCH}.factors", json.dumps(factors))
        say(f"writing factorized container ({weight_type}, {len(factors)} factorized tensors)")
        finish_writer(writer)
        say("materialising it and checking llama.cpp against PyTorch")
        with tempfile.TemporaryDirectory() as folder:
            dense = Path(folder) / "materialized.gguf"
            materialize(str(tmp), str(dense))
            check = verify_gguf(dense, loaded, weight_type)
            dense_bytes = dense.stat().st_size
    return {"path": str(path), "file_bytes": Path(path).stat().st_size, "weight_type": weight_type,
            "materialized_bytes": dense_bytes, "factorized_tensors": len(factors), **check}

