"""Shared fixtures: the tiny models every stage is tested on."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
# converted GGUFs (models/gguf_cache.py) go to a folder of the session's own, shared by its subprocesses
_CACHE = tempfile.mkdtemp(prefix="tensoredge-test-cache-")
os.environ.setdefault("TENSOREDGE_CACHE", _CACHE)
atexit.register(shutil.rmtree, _CACHE, True)


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
    from models import load_model

    return load_model("tiny-llama")


@pytest.fixture
def tiny_llama(_tiny_llama):
    loaded = copy.copy(_tiny_llama)
    loaded.model = copy.deepcopy(_tiny_llama.model)
    return loaded


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny(request):
    """Each tiny model in turn."""
    return request.getfixturevalue(request.param)
