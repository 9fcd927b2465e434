"""Models stored as a GGUF file, dequantized to float32 by transformers."""

from __future__ import annotations

from pathlib import Path

from models.base import LoadedModel, family_of, finish
from toolkit.errors import TensoredgeError


def gguf_pre_tokenizer(path: Path) -> str:
    """The llama.cpp pre-tokenizer name recorded in a GGUF file ('default' if none)."""
    from gguf import GGUFReader

    field = GGUFReader(path).get_field("tokenizer.ggml.pre")
    return field.contents() if field is not None else "default"


def load_gguf_file(path: Path, name: str | None = None, eval_context: int = 1024) -> LoadedModel:
    """Load a GGUF file (any architecture transformers can dequantize) as a float32 model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise TensoredgeError(f"GGUF file not found: {path}")
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensoredgeError(f"could not read GGUF file {path}: {first}") from None
    family = family_of(model.config)
    return LoadedModel(
        name=name or path.name,
        family=family,
        model=finish(model),
        tokenizer=tokenizer,
        source=f"GGUF file {path} (dequantized to float32)",
        gguf_pre=gguf_pre_tokenizer(path),
        eval_context=min(eval_context, model.config.max_position_embeddings),
    )
