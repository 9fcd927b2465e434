"""Random-initialised GPT-2 models built locally (no weights downloaded)."""

from __future__ import annotations

import json

from models.assets import gpt2_dir, gpt2_tokenizer
from models.base import LoadedModel, finish


def build_random_gpt2(name: str, seed: int, **overrides: int | float) -> LoadedModel:
    """GPT-2 small's config with `overrides`, weights drawn with a fixed seed."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config_dict = json.loads((gpt2_dir() / "config.json").read_text())
    config_dict.update(overrides)
    config = GPT2Config(**config_dict)
    torch.manual_seed(seed)
    model = finish(GPT2LMHeadModel(config))
    return LoadedModel(
        name=name,
        family="gpt2",
        model=model,
        tokenizer=gpt2_tokenizer(),
        source=f"random init (seed {seed}) with GPT-2 shapes {overrides or 'of GPT-2 small'}",
        gguf_pre="gpt-2",
        eval_context=min(1024, config.n_positions),
    )
