"""A tensoredge ONNX export driven by ONNX Runtime and numpy only: prefill, cached decode, full logits.

The graph follows Optimum's naming: inputs `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key|value` (batch, kv_heads, past, head_dim); outputs `logits` and
`present.{i}.key|value`. One graph serves prefill (past length 0) and decode (one new token).
A graph with `input_ids` alone (older exports) still runs, recomputing the prefix every step.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from device_bench.errors import BenchError, first_line

MODEL_FILES = ("model.onnx", "model.ort")  # what an export directory is opened by, in this order
PAST = re.compile(r"past_key_values\.(\d+)\.key")
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def model_file(path: str | os.PathLike) -> Path:
    """The .onnx/.ort file of an export directory, or `path` itself; BenchError if there is none."""
    path = Path(path)
    if path.is_dir():
        for name in MODEL_FILES:
            if (path / name).is_file():
                return path / name
        raise BenchError(f"{path} holds no {' or '.join(MODEL_FILES)}: give an export directory written by "
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

    def __init__(self, path: str | os.PathLike, threads: int | None = None, optimize: bool = True):
        self.path = model_file(path)
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
            _, self.kv_heads, _, self.head_dim = key.shape
            self.kv_dtype = NUMPY_TYPES.get(key.type, np.float32)
        self.outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
        self.meta = self.session.get_modelmeta().custom_metadata_map
        self.vocab_size = self._vocab_size(outputs["logits"].shape)
        self.reset()

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
        logits, self._past = self.forward(self._ids[None, :])
        return logits[0, -1]

    def decode_step(self, token: int) -> np.ndarray:
        if not self.kv_cache:  # no cache in the graph: recompute the whole prefix
            return self.prefill(np.append(self._ids, np.int64(token)))
        self._ids = np.append(self._ids, np.int64(token))
        logits, self._past = self.forward(np.array([[token]], np.int64), self._past)
        return logits[0, -1]

    def reset(self) -> None:
        self._ids = np.zeros(0, dtype=np.int64)
        self._past = None
