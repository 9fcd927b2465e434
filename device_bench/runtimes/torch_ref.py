"""PyTorch reference runtime (CPU or CUDA), with the KV cache. The only runtime that imports torch.

Model references look like `torch:MODEL` or `torch+cuda:MODEL`, where MODEL is anything
`tensoredge` loads (registered name, compressed folder, Hugging Face directory, .gguf file).
"""

from __future__ import annotations

import numpy as np

from device_bench.errors import BenchError, first_line

PREFIXES = ("torch:", "torch+cuda:", "torch+cpu:")


def is_torch_ref(path: str) -> bool:
    return path.startswith(PREFIXES)


class TorchRuntime:
    name = "pytorch"
    kv_cache = True

    def __init__(self, path: str, threads: int, max_tokens: int):
        try:
            import torch
        except ImportError:
            raise BenchError("the PyTorch runtime needs torch: pip install torch (or bench a .onnx/.gguf)") from None
        from models.base import max_positions
        from toolkit.checkpoint import open_model
        from toolkit.errors import TensoredgeError

        prefix, ref = path.split(":", 1)
        self.device = "cuda" if prefix == "torch+cuda" else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BenchError("torch+cuda: asked for, but torch sees no CUDA GPU: use torch: for the CPU")
        torch.set_num_threads(threads)
        try:
            loaded = open_model(ref)
        except TensoredgeError as exc:
            raise BenchError(first_line(exc)) from None
        context = max_positions(loaded.model.config)
        if max_tokens > context:
            raise BenchError(f"prompt + decode is {max_tokens} tokens, longer than the model's context of "
                             f"{context}: lower --prompt-tokens or --decode-tokens")
        self.model = loaded.model.to(self.device)
        self.torch = torch
        self.version = f"torch {torch.__version__}" + (f" cuda {torch.version.cuda}" if self.device == "cuda" else "")
        self.vocab_size = loaded.model.config.vocab_size
        self.model_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.device_name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        self._past = None

    def _forward(self, ids: list[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=self._past,
                             use_cache=True)
        self._past = out.past_key_values
        return out.logits[0, -1].float().cpu().numpy()  # the copy to host synchronises CUDA

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self._past = None
        return self._forward([int(t) for t in np.asarray(ids).reshape(-1)])

    def decode_step(self, token: int) -> np.ndarray:
        return self._forward([int(token)])

    def reset(self) -> None:
        self._past = None
