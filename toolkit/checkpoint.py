"""Compressed models on disk: model.safetensors + manifest.json + tokenizer files, in one folder."""

from __future__ import annotations

import json
from pathlib import Path

from device_bench.errors import first_line
from models import load_model
from models.base import LoadedModel, finish
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
        "config": loaded.model.config.to_dict(),
        "modules": {path: module.record for path, module in factorized_modules(loaded.model).items()},
        "parameters": count_parameters(loaded.model),
        **({"healing": healing} if healing else {}),
    }


def save_compressed(loaded: LoadedModel, plan: dict[str, str], out_dir: str | Path,
                    healing: list[dict] | None = None) -> Path:
    """Write the compressed model folder atomically; returns its path."""
    from safetensors.torch import save_model

    with atomic_path(out_dir, directory=True) as tmp:
        tmp.mkdir(exist_ok=True)
        save_model(loaded.model, str(tmp / WEIGHTS))
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest_of(loaded, plan, healing), indent=2) + "\n")
    return Path(out_dir)


def is_compressed_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise TensoredgeError(f"{path}/{MANIFEST} is not a tensoredge manifest ({FORMAT}): re-run tensoredge compress")
    return manifest


def load_compressed(path: str | Path) -> LoadedModel:
    """Rebuild the architecture from the manifest, put empty factor modules in, load the weights."""
    import torch
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(path)
    config = AutoConfig.for_model(**manifest["config"])
    torch.manual_seed(0)  # every weight is overwritten below; the seed only makes init cheap to reason about
    model = AutoModelForCausalLM.from_config(config)
    rebuild_(model, manifest["modules"])
    model = finish(model)
    try:
        load_weights(model, str(Path(path) / WEIGHTS), strict=True)
    except (RuntimeError, OSError) as exc:
        raise TensoredgeError(f"{path}/{WEIGHTS} does not match its manifest ({first_line(exc)})") from None
    return LoadedModel(
        name=f"{manifest['base_model']} (compressed: {path})",
        family=manifest["family"],
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(path),
        source=f"compressed from {manifest['source']}",
        gguf_pre=manifest["gguf_pre"],
        eval_context=manifest["eval_context"],
    )


def open_model(ref: str) -> LoadedModel:
    """A compressed folder, or anything `models.load_model` accepts."""
    return load_compressed(ref) if is_compressed_dir(ref) else load_model(ref)
