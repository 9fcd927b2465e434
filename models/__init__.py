"""The model registry: one small file per built-in model, plus loaders for paths and hub ids.

`load_model(ref)` accepts a registered name, a local Hugging Face directory, a `.gguf` file,
or a Hugging Face hub id (GPT-2 family), and fails with one line saying what it tried.
"""

from __future__ import annotations

from pathlib import Path

from models import gpt2_124m_random, smollm2_135m, tiny_gpt2, tiny_llama
from models.base import LoadedModel, ModelSpec
from toolkit.errors import TensoredgeError

DEFAULT_MODEL = "smollm2-135m"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec for spec in (smollm2_135m.SPEC, tiny_gpt2.SPEC, tiny_llama.SPEC, gpt2_124m_random.SPEC)
}


def load_model(ref: str) -> LoadedModel:
    """Resolve `ref` (registry name, directory, .gguf file or hub id) and load it."""
    if ref in REGISTRY:
        spec = REGISTRY[ref]
        loaded = spec.load()
        loaded.eval_context = min(loaded.eval_context, spec.eval_context)
        return loaded
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        from models.gguf_file import load_gguf_file

        return load_gguf_file(path)
    if path.is_dir():
        from models.hf_pretrained import load_hf

        return load_hf(str(path))
    names = ", ".join(REGISTRY)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:  # a path, not a hub id
        raise TensoredgeError(f"model '{ref}' not found: no such directory or file (registered: {names})")
    from models.hf_pretrained import load_hf

    try:
        return load_hf(ref)
    except TensoredgeError as exc:
        raise TensoredgeError(
            f"unknown model '{ref}': not a registered name ({names}), not a local path, "
            f"and the Hugging Face hub did not provide it ({exc})"
        ) from None
