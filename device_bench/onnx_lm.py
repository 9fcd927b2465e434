"""A tensoredge ONNX export driven by ONNX Runtime and numpy only: prefill, cached decode, full logits.

The graph takes `input_ids`, `attention_mask` and `past_key_values.{i}.key|value` (batch,
kv_heads, past, head_dim) and gives `logits` and `present.{i}.key|value` (ONNX Runtime GenAI's
names); `position_ids` is fed when a graph asks for it (older exports). One graph serves prefill
(past length 0) and decode (one new token). A graph whose attention is GroupQueryAttention
(metadata kv_cache = gqa-shared-buffer) decodes one sequence in place: past and present are bound
to the same max-length buffers, so a step writes only its new keys and values. A graph with
`input_ids` alone (older exports) still runs, recomputing the prefix every step.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from device_bench.errors import BenchError, first_line

# what an export directory is opened by, in this order
MODEL_FILES = tuple(f"model{suffix}.{ext}" for ext in ("onnx", "ort") for suffix in ("", "_int8", "_int4", "_fp16"))
SHARED_BUFFER = "gqa-shared-buffer"
PAST = re.compile(r"past_key_values\.(\d+)\.key")
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def model_file(path: str | os.PathLike) -> Path:
    """The .onnx/.ort file of an export directory, or `path` itself; BenchError if there is none."""
    path = Path(path)
    if path.is_dir():
        for name in MODEL_FILES:
            if (path / name).is_file():
                return path / name
        raise BenchError(f"{path} holds no {', '.join(MODEL_FILES)}: give an export directory written by "
                         "`tensoredge export onnx` or a .onnx/.ort file")
    if not path.is_file():
        raise BenchError(f"model file not found: {path} (check the path)")
    if path.suffix.lower() not in (".onnx", ".ort"):
        raise BenchError(f"{path} is not an ONNX model: expected a .onnx or .ort file or an export directory")
    return path


def export_config(path: str | os.PathLike) -> dict:
    """config.json beside the model file (written by the exporter), or {} when there is none."""
    config = model_file(path).parent / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def open_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True):
    """An onnxruntime CPU session; BenchError (one line) when onnxruntime or the file fails."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BenchError("onnxruntime is not installed: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3  # errors only: keep graph-cleanup warnings off the console
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind types (Fail, InvalidProtobuf, ...)
        raise BenchError(f"cannot load ONNX model {path}: {first_line(e)}") from None


class OnnxCausalLM:
    """One sequence (batch 1) at a time with a KV cache, plus batched full-sequence logits."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, optimize: bool = True,
                 max_tokens: int = 1024):
        self.path = model_file(path)
        self.max_tokens = max_tokens  # the in-place cache's first size; it grows if a sequence outruns it
        self.session = open_session(self.path, threads, optimize)
        import onnxruntime as ort

        self.version = ort.__version__
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "input_ids" not in inputs or "logits" not in outputs:
            raise BenchError(
                f"{self.path} does not follow the tensoredge ONNX contract (input 'input_ids' -> output "
                f"'logits'), it has inputs {list(inputs)} and outputs {list(outputs)}: re-export it with tensoredge"
            )
        self.input_names = set(inputs)
        self.layers = sum(1 for name in inputs if PAST.fullmatch(name))
        self.kv_cache = self.layers > 0
        if self.kv_cache:
            key = inputs["past_key_values.0.key"]
            self.kv_heads, self.head_dim = self._kv_dims(key.shape)
            self.kv_dtype = NUMPY_TYPES.get(key.type, np.float32)
        self.outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
        self.meta = self.session.get_modelmeta().custom_metadata_map
        self.vocab_size = self._vocab_size(outputs["logits"].shape)
        self.shared_buffer = self.kv_cache and self.meta.get("kv_cache") == SHARED_BUFFER
        self._buffers: InPlaceCache | None = None
        self.reset()

    def _kv_dims(self, shape: list) -> tuple[int, int]:
        """KV heads and head size: from the graph, or, where its dimensions are symbolic (e.g. GenAI's
        builder), from genai_config.json beside it."""
        _, heads, _, head_dim = shape
        if isinstance(heads, int) and isinstance(head_dim, int):
            return heads, head_dim
        config_path = self.path.parent / "genai_config.json"
        if config_path.is_file():
            decoder = json.loads(config_path.read_text())["model"]["decoder"]
            return int(decoder["num_key_value_heads"]), int(decoder["head_size"])
        raise BenchError(f"{self.path}: its KV cache shape {shape} is symbolic and no genai_config.json says "
                         "the heads and head size: re-export it with tensoredge")

    def _vocab_size(self, logits_shape: list) -> int:
        if "vocab_size" in self.meta:
            return int(self.meta["vocab_size"])
        if logits_shape and isinstance(logits_shape[-1], int):
            return logits_shape[-1]
        raise BenchError(f"cannot tell the vocab size of {self.path}: "
                         "add metadata_props 'vocab_size' or give logits a static last dim")

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, self.kv_dtype) for _ in range(2 * self.layers)]

    def forward(self, ids: np.ndarray, past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (batch, seq, vocab) of `ids` (batch, seq) after `past`; and the new cache."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        batch, seq = ids.shape
        feed = {"input_ids": ids}
        if not self.kv_cache:
            return self.run(["logits"], feed)[0], []
        past = self.empty_past(batch) if past is None else past
        start = past[0].shape[2]
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = np.ones((batch, start + seq), np.int64)
        if "position_ids" in self.input_names:
            feed["position_ids"] = np.ascontiguousarray(np.broadcast_to(np.arange(start, start + seq), (batch, seq)))
        for i in range(self.layers):
            feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
        logits, *present = self.run(self.outputs, feed)
        return logits, present

    def run(self, outputs: list[str], feed: dict) -> list[np.ndarray]:
        """session.run, its failures one line (e.g. positions past the graph's table)."""
        try:
            return self.session.run(outputs, feed)
        except Exception as e:  # onnxruntime's own pybind exception types
            raise BenchError(f"ONNX Runtime failed running {self.path}: {first_line(e)}") from None

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Full-sequence logits (batch, seq, vocab) with no cache, as float32."""
        return self.forward(np.asarray(ids))[0].astype(np.float32, copy=False)

    # The device_bench Runtime interface: one sequence, last-position logits.
    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self._ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.shared_buffer:
            if self._buffers is None:
                self._buffers = InPlaceCache(self, max(self.max_tokens, self._ids.size + 1))
            return self._buffers.run(self._ids, 0)
        logits, self._past = self.forward(self._ids[None, :])
        return logits[0, -1]

    def decode_step(self, token: int) -> np.ndarray:
        if not self.kv_cache:  # no cache in the graph: recompute the whole prefix
            return self.prefill(np.append(self._ids, np.int64(token)))
        self._ids = np.append(self._ids, np.int64(token))
        if self.shared_buffer:
            return self._buffers.run(self._ids[-1:], self._ids.size - 1)
        logits, self._past = self.forward(np.array([[token]], np.int64), self._past)
        return logits[0, -1]

    def reset(self) -> None:
        self._ids = np.zeros(0, dtype=np.int64)
        self._past = None


class InPlaceCache:
    """Max-length KV buffers bound as both past and present (IO binding): GroupQueryAttention
    writes each step's keys and values in place, nothing is copied between steps."""

    def __init__(self, lm: OnnxCausalLM, capacity: int):
        import onnxruntime as ort

        self.lm, self.capacity = lm, capacity
        self.binding = lm.session.io_binding()
        self.binding.bind_output("logits")  # first, so it is output 0
        shape = (1, lm.kv_heads, capacity, lm.head_dim)
        self.buffers = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, lm.kv_dtype)) for _ in range(2 * lm.layers)]
        for i, buffer in enumerate(self.buffers):
            layer, kv = divmod(i, 2)
            name = ("key", "value")[kv]
            self.binding.bind_ortvalue_input(f"past_key_values.{layer}.{name}", buffer)
            self.binding.bind_ortvalue_output(f"present.{layer}.{name}", buffer)
        self.mask = np.ones((1, capacity), np.int64)

    def run(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Logits of the last of `ids` (1-D), which sit at positions start.. of the sequence."""
        end = start + ids.size
        if end > self.capacity:  # outgrown: a larger cache, refilled from the tokens so far
            self.__init__(self.lm, max(2 * self.capacity, end))
            return self.run(self.lm._ids, 0)
        self.binding.bind_output("logits")  # ORT allocates logits of this step's shape
        self.binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids[None, :]))
        self.binding.bind_cpu_input("attention_mask", self.mask[:, :end])
        self.lm.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()[0].numpy()[0, -1]
