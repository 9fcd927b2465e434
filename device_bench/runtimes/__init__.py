"""Pick an inference runtime by model file suffix."""

import os
from typing import Protocol

import numpy as np

from device_bench.errors import BenchError
from device_bench.onnx_lm import model_file
from device_bench.runtimes.genai import GenAIRuntime, is_genai_ref
from device_bench.runtimes.llama_cpp import LlamaCppRuntime
from device_bench.runtimes.onnx import OnnxRuntime
from device_bench.runtimes.torch_ref import TorchRuntime, is_torch_ref


class Runtime(Protocol):
    """What the benchmark needs from a runtime: greedy-decodable last-position logits."""

    name: str  # e.g. "onnxruntime"
    version: str
    vocab_size: int
    kv_cache: bool  # False: every decode step recomputes the whole prefix

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Start a new sequence from 1-D token ids; return last-position logits (vocab,)."""
        ...

    def decode_step(self, token: int) -> np.ndarray:
        """Append one token; return its logits (vocab,)."""
        ...

    def reset(self) -> None:
        """Forget the current sequence."""
        ...


RUNTIMES = {".onnx": OnnxRuntime, ".ort": OnnxRuntime, ".gguf": LlamaCppRuntime}


def runtime_class(path: str) -> type:
    """The runtime class for `path`'s suffix, an ONNX export directory, or `torch:`; BenchError if unsupported."""
    if is_torch_ref(path):
        return TorchRuntime
    if is_genai_ref(path):
        return GenAIRuntime
    if os.path.isdir(path):
        model_file(path)  # BenchError unless it holds model.onnx / model.ort
        return OnnxRuntime
    if not os.path.isfile(path):
        raise BenchError(f"model file not found: {path} (check the path)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in RUNTIMES:
        raise BenchError(f"unsupported model file {path}: expected a .onnx, .ort or .gguf file, "
                         "an ONNX export directory, genai:FOLDER or torch:MODEL")
    return RUNTIMES[suffix]


def open_runtime(path: str, threads: int, max_tokens: int = 2048) -> Runtime:
    """Load `path` with the runtime for its suffix; max_tokens bounds prompt + decode length."""
    return runtime_class(path)(path, threads, max_tokens)
