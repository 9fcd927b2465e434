"""GPT-2 (and Llama) family models in Hugging Face format: a local directory or a hub id."""

from __future__ import annotations

from pathlib import Path

from device_bench.errors import first_line
from models.base import LoadedModel, family_of, finish, max_positions
from toolkit.errors import TensoredgeError


def load_hf(ref: str) -> LoadedModel:
    """Load from a local directory or, failing that, the Hugging Face hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = "local directory" if Path(ref).is_dir() else "Hugging Face hub id"
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, use_safetensors=True)  # never a pickled .bin
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        raise TensoredgeError(f"could not load {where} '{ref}': {first_line(exc)}") from None
    family = family_of(model.config)
    context = max_positions(model.config)
    return LoadedModel(
        name=ref,
        family=family,
        model=finish(model),
        tokenizer=tokenizer,
        source=f"{where} {ref}",
        gguf_pre="gpt-2" if family == "gpt2" else "default",
        eval_context=min(1024, context),
    )
