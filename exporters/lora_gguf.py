"""TT-LoRA adapters as a llama.cpp LoRA GGUF: per adapted weight, rank-r A and B from the materialised ΔW.

llama.cpp adds scale * B (A x) beside each adapted weight, scale = adapter_scale * alpha / r. We
write every pair at one rank r with alpha = r, so the scale is exactly the user's adapter scale.
The adapter's names and layouts follow the base GGUF that `exporters.gguf` writes (GPT-2's
Conv1D transposed, Llama's q/k rows in llama.cpp's rotary order).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from device_bench.files import gguf_output_key
from exporters.gguf import ARCHES, export_gguf, gguf_name_of, gguf_tensor, tensor_map, verify_gguf
from models.base import LoadedModel
from toolkit.adapters import adapters_of, remove_adapters_
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path


def low_rank_pair(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B out x r, A r x in, relative Frobenius error) of the best rank-r ΔW ≈ B A."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    b = u[:, :r] * s[:r]
    a = vh[:r]
    if r < rank:  # pad to the file's common rank with zero pairs
        b = torch.nn.functional.pad(b, (0, rank - r))
        a = torch.nn.functional.pad(a, (0, 0, 0, rank - r))
    error = float(s[r:].norm() / s.norm()) if float(s.norm()) > 0 else 0.0
    return b.float(), a.float(), error


def rank_for_error(delta: torch.Tensor, tolerance: float) -> int:
    """The smallest rank whose truncation leaves at most `tolerance` relative Frobenius error."""
    s2 = torch.linalg.svdvals(delta.double()) ** 2
    if float(s2.sum()) == 0:
        return 1
    left = (s2.sum() - torch.cumsum(s2, 0)).clamp(min=0).sqrt() / s2.sum().sqrt()  # error after rank k+1
    return int((left > tolerance).sum()) + 1


def base_of(loaded: LoadedModel) -> LoadedModel:
    """A copy of `loaded` without its adapters: the model the LoRA GGUF applies to."""
    model = copy.deepcopy(loaded.model)
    remove_adapters_(model)
    return dataclasses.replace(loaded, model=model)


def export_lora_gguf(loaded: LoadedModel, path: str | Path, rank: int | None = None, tolerance: float = 0.01,
                     base_gguf: str | Path | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Write the adapters of `loaded.model` as a LoRA GGUF for the GGUF of its base (without adapters).

    The rank is `rank`, or the smallest that keeps every update within `tolerance` relative error:
    a TT-matrix update is usually of full matrix rank, so the LoRA file is an approximation whose
    error the result reports. Before the file is kept, llama.cpp runs the base GGUF (`base_gguf`, or an f32 one written to a
    temporary folder) with the adapter, and its greedy logits must match PyTorch's with adapters.
    """
    import gguf

    say = progress or (lambda _msg: None)
    adapters = adapters_of(loaded.model)
    if not adapters:
        raise TensoredgeError("the model has no adapters: load them first (tensoredge heal writes them)")
    deltas = {p: a.delta_weight().detach().float() for p, a in adapters.items()}
    if rank is None:
        rank = max(rank_for_error(d, tolerance) for d in deltas.values())
    names = tensor_map(loaded)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[ARCHES[loaded.family]]]
    errors = {}
    with atomic_path(path, kind="lora") as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        gguf_output_key(writer, "lora")
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
        for module_path, delta in deltas.items():
            adapter = adapters[module_path]
            b, a, errors[module_path] = low_rank_pair(delta, rank)
            hf_name = f"{module_path}.weight"
            base_name = gguf_name_of(names, hf_name, loaded.family)
            # gguf_tensor puts a weight in llama.cpp's layout; B carries the output rows, so it
            # gets the same row order (and, for Conv1D, is handed over in Conv1D's (in, out) layout).
            b_hf = b.T if adapter.layout == "conv1d" else b
            writer.add_tensor(f"{base_name}.lora_b", gguf_tensor(hf_name, b_hf, loaded.family, loaded.model.config))
            writer.add_tensor(f"{base_name}.lora_a", np.ascontiguousarray(a.numpy(), dtype=np.float32))
        say(f"writing LoRA GGUF: {len(deltas)} adapted weights at rank {rank}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with tempfile.TemporaryDirectory() as folder:
            if base_gguf is None:
                say("writing an f32 GGUF of the base to check the adapter against")
                base_gguf = Path(folder) / "base.gguf"
                export_gguf(base_of(loaded), base_gguf, "f32")
            say("checking llama.cpp with the adapter against PyTorch")
            exact = max(errors.values()) < 1e-4  # a truncated update may flip near-tied tokens
            check = verify_gguf(Path(base_gguf), loaded, "f32", lora=tmp, min_agreement=1.0 if exact else 0.9)
    return {"path": str(path), "file_bytes": Path(path).stat().st_size, "rank": rank,
            "adapted_weights": len(deltas), "max_relative_error": max(errors.values()), **check}
