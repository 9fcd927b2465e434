"""Compressed models on disk: model.safetensors + manifest.json + tokenizer files, in one folder."""

from __future__ import annotations

import json
from pathlib import Path

from device_bench.errors import first_line
from models import load_model
from models.base import LoadedModel, finish
from models.tokenizer_files import save_tokenizer
from toolkit.compress import factorized_modules, rebuild_
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

FORMAT = "tensoredge.compressed/1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def manifest_of(loaded: LoadedModel, plan: dict[str, str], healing: list[dict] | None = None) -> dict:
    """Methods, ranks and shapes of every factorized module, plus what is needed to rebuild; with
    `healing`, the record of every healing run the weights went through (toolkit.heal)."""
    return {
        "format": FORMAT,
        "base_model": loaded.name,
        "family": loaded.family,
        "source": loaded.source,
        "gguf_pre": loaded.gguf_pre,
        "eval_context": loaded.eval_context,
        "plan": plan,
        "general": loaded.metadata,
        "config": loaded.model.config.to_dict(),
        "modules": {path: module.record for path, module in factorized_modules(loaded.model).items()},
        "parameters": count_parameters(loaded.model),
        **({"healing": healing} if healing else {}),
    }


def save_compressed(loaded: LoadedModel, plan: dict[str, str], out_dir: str | Path,
                    healing: list[dict] | None = None) -> Path:
    """Write the compressed model folder atomically; returns its path."""
    from safetensors.torch import save_model

    with atomic_path(out_dir, directory=True, kind="compressed") as tmp:
        save_model(loaded.model, str(tmp / WEIGHTS))
        save_tokenizer(loaded.tokenizer, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest_of(loaded, plan, healing), indent=2) + "\n")
    return Path(out_dir)


def is_compressed_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


MAX_MANIFEST_BYTES = 64 << 20
NEEDED = {"base_model": str, "family": str, "source": str, "plan": dict, "config": dict, "modules": dict}


def read_manifest(path: str | Path) -> dict:
    """The manifest of compressed folder `path`, checked for the keys and types we rely on."""
    file = Path(path) / MANIFEST
    broken = f"{file} is not a usable tensoredge manifest"
    fix = "compress the model again (tensoredge compress ... --out NEW_FOLDER)"
    try:
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise TensoredgeError(f"{broken}: {file.stat().st_size} bytes is far too large: {fix}")
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TensoredgeError(f"{broken} ({first_line(exc)}): {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TensoredgeError(f"{file} is not a tensoredge manifest ({FORMAT}): re-run tensoredge compress")
    for key, kind in NEEDED.items():
        if not isinstance(manifest.get(key), kind):
            raise TensoredgeError(f"{broken}: '{key}' is missing or not a {kind.__name__}: {fix}")
    if not all(isinstance(r, dict) and isinstance(r.get("method"), str) for r in manifest["modules"].values()):
        raise TensoredgeError(f"{broken}: a module record has no method: {fix}")
    return manifest


def skeleton(manifest: dict, device: str = "cpu"):
    """The manifest's architecture with empty factor modules at their paths, on `device` ("meta":
    shapes only, nothing allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**manifest["config"])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
        rebuild_(model, manifest["modules"])
    return model


def check_shapes(path: str | Path, manifest: dict) -> None:
    """Every tensor the manifest implies exists in model.safetensors with the same shape, before
    anything is allocated: a manifest claiming rank 1e12 or a truncated file is one line."""
    from safetensors import safe_open

    weights = Path(path) / WEIGHTS
    fix = "compress the model again (tensoredge compress ... --out NEW_FOLDER)"
    try:
        model = skeleton(manifest, "meta")
    except TensoredgeError:
        raise
    except Exception as exc:  # a record or config transformers cannot build from
        raise TensoredgeError(f"{path}/{MANIFEST} does not describe a model we can build "
                              f"({type(exc).__name__}: {first_line(exc)}): {fix}") from None
    try:
        with safe_open(str(weights), framework="pt") as f:  # checks the header against the file size
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise TensoredgeError(f"{weights} is not a complete safetensors file ({first_line(exc)}): {fix}") from None
    state = model.state_dict(keep_vars=True)  # Parameters themselves: a tied weight is one object
    aliases: dict[int, list[str]] = {}  # tied weights: one tensor under several names, stored once
    for name, tensor in state.items():
        aliases.setdefault(id(tensor), []).append(name)
    for name, tensor in state.items():
        if name in stored and stored[name] != tuple(tensor.shape):
            raise TensoredgeError(f"{weights} does not match its manifest: {name} is {list(stored[name])} there, "
                                  f"the manifest makes it {list(tensor.shape)}: {fix}")
        if not any(alias in stored for alias in aliases[id(tensor)]):
            raise TensoredgeError(f"{weights} does not match its manifest: it lacks {name}: {fix}")


def load_compressed(path: str | Path) -> LoadedModel:
    """Rebuild the architecture from the manifest, put empty factor modules in, load the weights."""
    import torch
    from safetensors.torch import load_model as load_weights
    from transformers import AutoTokenizer

    manifest = read_manifest(path)
    check_shapes(path, manifest)
    torch.manual_seed(0)  # every weight is overwritten below; the seed only makes init cheap to reason about
    model = finish(skeleton(manifest))
    try:
        load_weights(model, str(Path(path) / WEIGHTS), strict=True)
    except Exception as exc:  # RuntimeError, OSError, safetensors' SafetensorError
        raise TensoredgeError(f"{path}/{WEIGHTS} does not match its manifest ({first_line(exc)})") from None
    return LoadedModel(
        name=f"{manifest['base_model']} (compressed: {path})",
        family=manifest["family"],
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(path),
        source=f"compressed from {manifest['source']}",
        gguf_pre=manifest.get("gguf_pre", "default"),
        eval_context=manifest.get("eval_context", 1024),
        metadata=manifest.get("general") or {},
        plan=manifest["plan"],
    )


def open_model(ref: str) -> LoadedModel:
    """A compressed folder, or anything `models.load_model` accepts."""
    return load_compressed(ref) if is_compressed_dir(ref) else load_model(ref)
