"""Adapters beside a (compressed) model: add, save, load and merge TT-LoRA updates.

`add_adapters_(model, family, targets, config)` wraps every linear of the targets ("mlp",
"attention") in a `TTLoRA`; only the adapters' cores are trainable afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from toolkit.adapters.tt_lora import TTLoRA, TTLoRAConfig, wrap
from toolkit.compress.registry import Factorized
from toolkit.compress.targets import find_targets
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

ADAPTER_FORMAT = "tensoredge.tt-lora/1"
ADAPTER_JSON, ADAPTER_WEIGHTS = "adapter.json", "adapter.safetensors"


def add_adapters_(model: nn.Module, family: str, targets: list[str], config: TTLoRAConfig) -> dict[str, TTLoRA]:
    """Freeze `model` and wrap every linear of `targets` in a fresh TT-LoRA; returns them by path."""
    model.requires_grad_(False)
    added = {}
    for target in targets:
        if target not in ("mlp", "attention"):
            raise TensoredgeError(f"TT-LoRA goes on 'mlp' or 'attention' linears, not '{target}'")
        for path in find_targets(model, family, target):
            module = model.get_submodule(path)
            if isinstance(module, TTLoRA):
                raise TensoredgeError(f"{path} already has an adapter: merge or remove it first")
            added[path] = wrap(module, config)
            model.set_submodule(path, added[path])
    return added


def remove_adapters_(model: nn.Module) -> None:
    """Put every adapted layer's base back, dropping its adapter."""
    for path, adapter in adapters_of(model).items():
        model.set_submodule(path, adapter.base)


def adapters_of(model: nn.Module) -> dict[str, TTLoRA]:
    return {path: m for path, m in model.named_modules() if isinstance(m, TTLoRA)}


def adapter_parameters(model: nn.Module) -> int:
    return sum(p.numel() for m in adapters_of(model).values() for p in m.cores)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' cores only, named `<path>.cores.<k>`."""
    return {f"{path}.cores.{k}": core.detach().contiguous()
            for path, module in adapters_of(model).items() for k, core in enumerate(module.cores)}


def save_adapters(model: nn.Module, out_dir: str | Path, base: str) -> Path:
    """Write the side adapter (adapter.json + adapter.safetensors) atomically; `base` names the model it fits."""
    from safetensors.torch import save_file

    adapters = adapters_of(model)
    if not adapters:
        raise TensoredgeError("the model has no adapters to save")
    with atomic_path(out_dir, directory=True, kind="adapter") as tmp:
        save_file(adapter_state(model), str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_JSON).write_text(json.dumps({
            "format": ADAPTER_FORMAT, "base": base, "parameters": adapter_parameters(model),
            "modules": {path: m.record for path, m in adapters.items()}}, indent=2) + "\n")
    return Path(out_dir)


def load_adapters_(model: nn.Module, adapter_dir: str | Path) -> dict[str, TTLoRA]:
    """Wrap the recorded linears of `model` in adapters and load their cores from `adapter_dir`."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / ADAPTER_JSON
    if not path.is_file():
        raise TensoredgeError(f"{adapter_dir} holds no {ADAPTER_JSON}: give the folder `tensoredge heal` wrote")
    spec = json.loads(path.read_text())
    if spec.get("format") != ADAPTER_FORMAT:
        raise TensoredgeError(f"{path} is not a TT-LoRA adapter ({ADAPTER_FORMAT})")
    model.requires_grad_(False)
    added = {}
    for module_path, record in spec["modules"].items():
        config = TTLoRAConfig(rank=record["rank"], order=record["order"], alpha=record["alpha"])
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            raise TensoredgeError(f"adapter targets {module_path}, which this model lacks: "
                                  f"use it with its base ({spec['base']})") from None
        added[module_path] = wrap(module, config)
        model.set_submodule(module_path, added[module_path])
    state = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    for name, tensor in state.items():
        module_path, _, k = name.rpartition(".cores.")
        target = added[module_path].cores[int(k)]
        if target.shape != tensor.shape:
            raise TensoredgeError(f"adapter core {name} has shape {tuple(tensor.shape)}, the model needs "
                                  f"{tuple(target.shape)}: use the adapter with its own base ({spec['base']})")
        target.data.copy_(tensor)
    return added


@torch.no_grad()
def merge_adapters_(model: nn.Module) -> dict[str, float]:
    """Fold every adapter into its base, in place. Dense bases add ΔW exactly; a low-rank base is
    re-factorised by SVD at its own rank (parameters unchanged). Returns each merge's relative error
    ||W_merged - (W + ΔW)|| / ||W + ΔW|| (0 for dense bases)."""
    errors = {}
    for path, adapter in adapters_of(model).items():
        base, delta = adapter.base, adapter.delta_weight()
        if isinstance(base, nn.Linear):
            base.weight += delta
            errors[path] = 0.0
        elif type(base).__name__ == "Conv1D":
            base.weight += delta.T
            errors[path] = 0.0
        elif isinstance(base, Factorized) and base.record.get("method") == "svd":
            errors[path] = refactor_low_rank_(base, delta)
        else:
            method = base.record.get("method") if isinstance(base, Factorized) else type(base).__name__
            raise TensoredgeError(f"cannot merge an adapter into {method} factors at {path}: "
                                  "keep it as a side adapter (save_adapters / --keep-adapter)")
        model.set_submodule(path, base)
    return errors


def refactor_low_rank_(low_rank: nn.Module, delta: torch.Tensor) -> float:
    """up @ down <- best rank-r approximation of (up @ down + delta); returns the relative error."""
    target = (low_rank.up.weight @ low_rank.down.weight + delta).double()
    u, s, vh = torch.linalg.svd(target, full_matrices=False)
    rank = low_rank.down.weight.shape[0]
    root = s[:rank].sqrt()
    low_rank.down.weight.copy_((root[:, None] * vh[:rank]).float())
    low_rank.up.weight.copy_((u[:, :rank] * root).float())
    return float(s[rank:].norm() / s.norm())
