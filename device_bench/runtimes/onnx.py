"""onnxruntime runtime for tensoredge ONNX exports (an export directory, or its .onnx/.ort file).

Decodes incrementally with the graph's KV cache (past_key_values.* -> present.*); a graph with
`input_ids` alone (an older export) still runs, recomputing the whole prefix each step.
"""

from device_bench.onnx_lm import OnnxCausalLM


class OnnxRuntime(OnnxCausalLM):
    name = "onnxruntime"

    def __init__(self, path: str, threads: int, max_tokens: int):
        super().__init__(path, threads, max_tokens=max_tokens)  # sizes the in-place KV cache
        self.model_bytes = self.path.stat().st_size
