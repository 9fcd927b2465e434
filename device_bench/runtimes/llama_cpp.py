"""llama-cpp-python runtime for GGUF files (with KV cache)."""

from __future__ import annotations

import numpy as np

from device_bench.errors import BenchError, first_line


class LlamaCppRuntime:
    name = "llama-cpp-python"
    kv_cache = True

    def __init__(self, path: str, threads: int, max_tokens: int, f32_cache: bool = False,
                 lora_path: str | None = None):
        """`f32_cache` keeps the KV cache in float32 (llama.cpp's default is f16): for exact checks;
        `lora_path` applies a LoRA adapter GGUF on top of the model."""
        try:
            import llama_cpp
        except ImportError:
            raise BenchError("llama-cpp-python is not installed: pip install llama-cpp-python") from None
        self._llama_cpp = llama_cpp
        self.version = llama_cpp.__version__
        try:
            self.llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=max_tokens,
                n_batch=min(max_tokens, 512),
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
                lora_path=lora_path,
                **({"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}),
            )
        except (ValueError, RuntimeError) as e:  # e.g. "Failed to load model from file: ..."
            what = f"GGUF model {path}" + (f" with LoRA {lora_path}" if lora_path else "")
            msg = f"cannot load {what}: {first_line(e)} (is the file complete and valid GGUF for this model?)"
            raise BenchError(msg) from None
        self.vocab_size = self.llm.n_vocab()

    def _last_logits(self) -> np.ndarray:
        # With logits_all=False, Llama.eval no longer fills llm.scores (llama-cpp-python >= 0.3),
        # so read the last output row straight from the context.
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy()

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.llm.reset()
        self.llm.eval([int(t) for t in np.asarray(ids).reshape(-1)])
        return self._last_logits()

    def decode_step(self, token: int) -> np.ndarray:
        self.llm.eval([int(token)])
        return self._last_logits()

    def reset(self) -> None:
        self.llm.reset()
