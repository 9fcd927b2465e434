"""onnxruntime runtime for tensoredge ONNX exports.

Contract: input `input_ids` int64 (batch, seq) -> output `logits` float32 (batch, seq, vocab).
There is no KV cache yet, so each decode step reruns the whole prefix.
"""

import numpy as np

from device_bench.errors import BenchError, first_line


class OnnxRuntime:
    name = "onnxruntime"
    kv_cache = False

    def __init__(self, path: str, threads: int, max_tokens: int):
        # max_tokens is unused: without a KV cache there is no context buffer to size.
        try:
            import onnxruntime as ort
        except ImportError:
            raise BenchError("onnxruntime is not installed: pip install onnxruntime") from None
        self.version = ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: keep graph-cleanup warnings off the console
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own pybind types (Fail, InvalidProtobuf, ...)
            raise BenchError(f"cannot load ONNX model {path}: {first_line(e)}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o for o in self.session.get_outputs()}
        if inputs != ["input_ids"] or "logits" not in outputs:
            raise BenchError(
                f"{path} does not follow the tensoredge ONNX contract (input 'input_ids' -> output "
                f"'logits'), it has inputs {inputs} and outputs {list(outputs)}: re-export it with tensoredge"
            )
        self.vocab_size = self._vocab_size(path, outputs["logits"].shape)
        self._ids = np.zeros(0, dtype=np.int64)

    def _vocab_size(self, path: str, logits_shape: list) -> int:
        meta = self.session.get_modelmeta().custom_metadata_map
        if "vocab_size" in meta:
            return int(meta["vocab_size"])
        if logits_shape and isinstance(logits_shape[-1], int):
            return logits_shape[-1]
        raise BenchError(
            f"cannot tell the vocab size of {path}: "
            "add metadata_props 'vocab_size' or give logits a static last dim"
        )

    def _run(self) -> np.ndarray:
        logits = self.session.run(["logits"], {"input_ids": self._ids[None, :]})[0]
        return logits[0, -1]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self._ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._run()

    def decode_step(self, token: int) -> np.ndarray:
        self._ids = np.append(self._ids, np.int64(token))
        return self._run()

    def reset(self) -> None:
        self._ids = np.zeros(0, dtype=np.int64)
