"""ONNX Runtime GenAI as a runtime: `genai:FOLDER`, a folder with genai_config.json (one of our
exports, or a model written by GenAI's own builder), run by GenAI's generator with its KV cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from device_bench.errors import BenchError, first_line

PREFIX = "genai:"


def is_genai_ref(path: str) -> bool:
    return path.startswith(PREFIX)


def genai_model_file(path: str) -> str:
    """The decoder file genai_config.json names in `genai:FOLDER`; BenchError when there is none."""
    folder = Path(path[len(PREFIX):])
    config = folder / "genai_config.json"
    if not config.is_file():
        raise BenchError(f"{folder} holds no genai_config.json: give a folder written by `tensoredge export onnx` "
                         "or by onnxruntime_genai's model builder")
    try:
        name = json.loads(config.read_text())["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{config} is not a GenAI config ({first_line(e)}): re-export the model") from None
    if not (folder / name).is_file():
        raise BenchError(f"{config} names {name}, which is missing from {folder}")
    return str(folder / name)


class GenAIRuntime:
    name = "onnxruntime-genai"
    kv_cache = True

    def __init__(self, path: str, threads: int, max_tokens: int):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise BenchError("onnxruntime-genai is not installed: pip install onnxruntime-genai") from None
        self._og, self.max_tokens = og, max_tokens
        self.model_bytes = Path(genai_model_file(path)).stat().st_size
        folder = path[len(PREFIX):]
        try:
            config = og.Config(folder)
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            self.model = og.Model(config)
        except Exception as e:  # GenAI raises RuntimeError/OrtException with its own text
            raise BenchError(f"onnxruntime-genai cannot load {folder}: {first_line(e)}") from None
        self.version = og.__version__
        self.vocab_size = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["vocab_size"]
        self.generator = None

    def _logits(self) -> np.ndarray:
        return np.asarray(self.generator.get_logits()).reshape(-1, self.vocab_size)[-1].astype(np.float32)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_tokens, do_sample=False)
        self.generator = self._og.Generator(self.model, params)
        self.generator.append_tokens(np.asarray(ids, dtype=np.int32).reshape(1, -1))
        return self._logits()

    def decode_step(self, token: int) -> np.ndarray:
        self.generator.append_tokens(np.array([[token]], dtype=np.int32))
        return self._logits()

    def reset(self) -> None:
        self.generator = None
