"""Shared fixtures: the tiny models every stage is tested on."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network


@pytest.fixture(scope="session")
def _tiny_gpt2():
    from models import load_model

    return load_model("tiny-gpt2")


@pytest.fixture
def tiny_gpt2(_tiny_gpt2):
    """A fresh copy of tiny-gpt2 (tests may compress it in place)."""
    loaded = copy.copy(_tiny_gpt2)
    loaded.model = copy.deepcopy(_tiny_gpt2.model)
    return loaded


@pytest.fixture(scope="session")
def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.assets import gpt2_tokenizer
    from models.base import LoadedModel, finish

    config = LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.2, rope_theta=10000.0)
    torch.manual_seed(0)
    return LoadedModel(name="tiny-llama", family="llama", model=finish(LlamaForCausalLM(config)),
                       tokenizer=gpt2_tokenizer(), source="random tiny Llama (tests)", gguf_pre="gpt-2",
                       eval_context=256)


@pytest.fixture
def tiny_llama(_tiny_llama):
    loaded = copy.copy(_tiny_llama)
    loaded.model = copy.deepcopy(_tiny_llama.model)
    return loaded


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny(request):
    """Each tiny model in turn."""
    return request.getfixturevalue(request.param)
