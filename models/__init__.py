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
    unknown = f"unknown model '{ref}': not a registered name ({names}), not a local folder or file"
    why_not = hub_unavailable()
    if why_not:
        raise TensoredgeError(f"{unknown}, and the Hugging Face hub was not tried ({why_not})")
    from models.hf_pretrained import load_hf

    try:
        return load_hf(ref)
    except TensoredgeError as exc:
        raise TensoredgeError(f"{unknown}, and the Hugging Face hub did not provide it ({exc})") from None


def hub_unavailable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be asked now (offline settings, or no connection within
    `timeout` seconds), or None when it can: one quick look instead of a minute of retries."""
    import os
    import socket
    from urllib.parse import urlparse

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} is unreachable: {exc.strerror or type(exc).__name__}"
    return None
