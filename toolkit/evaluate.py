"""Perplexity in strided windows, and KL / top-1 agreement against a reference model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class Window:
    """Token ids fed to the model and the first position whose next token is scored."""

    ids: list[int]
    first_scored: int


def strided_windows(ids: list[int], context: int, stride: int) -> list[Window]:
    """Windows of `context` tokens every `stride`; each token is scored once, with the most context."""
    if not 0 < stride <= context:
        raise ValueError("stride must be in 1..context")
    windows, scored_to = [], 1  # position 0 has nothing to be predicted from
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + context, len(ids))
        windows.append(Window(ids[begin:end], max(scored_to - begin - 1, 0)))
        scored_to = end
        if end == len(ids):
            break
    return windows


@dataclass
class Scores:
    """Running sums for one model: negative log-likelihood, and divergence from the reference."""

    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    tokens: int = 0

    def summary(self, with_reference: bool) -> dict:
        out = {"perplexity": math.exp(self.nll / self.tokens), "nll": self.nll / self.tokens, "tokens": self.tokens}
        if with_reference:
            out |= {"kl": self.kl / self.tokens, "top1_agreement": self.agree / self.tokens}
        return out


@torch.inference_mode()
def compare(
    reference: torch.nn.Module,
    candidates: dict[str, torch.nn.Module],
    windows: list[Window],
    progress: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> dict[str, dict]:
    """Perplexity of the reference and every candidate; KL(ref || cand) and top-1 agreement per token.

    The models must already be on `device`; the window's ids are put there."""
    scores = {"reference": Scores(), **{name: Scores() for name in candidates}}
    start = time.time()
    for i, window in enumerate(windows):
        ids = torch.tensor([window.ids], device=device)
        targets = ids[0, window.first_scored + 1 :]
        ref_logp = F.log_softmax(reference(ids).logits[0, window.first_scored : -1].float(), dim=-1)
        _accumulate(scores["reference"], ref_logp, targets)
        for name, model in candidates.items():
            logp = F.log_softmax(model(ids).logits[0, window.first_scored : -1].float(), dim=-1)
            _accumulate(scores[name], logp, targets)
            scores[name].kl += F.kl_div(logp, ref_logp, log_target=True, reduction="sum").item()
            scores[name].agree += (logp.argmax(-1) == ref_logp.argmax(-1)).sum().item()
        if progress and ((i + 1) % max(1, len(windows) // 20) == 0 or i + 1 == len(windows)):
            progress(f"eval window {i + 1}/{len(windows)} ({time.time() - start:.0f} s)")
    return {name: s.summary(with_reference=name != "reference") for name, s in scores.items()}


def _accumulate(scores: Scores, logp: torch.Tensor, targets: torch.Tensor) -> None:
    scores.nll -= logp.gather(-1, targets[:, None]).sum().item()
    scores.tokens += targets.numel()


class OnnxLogits:
    """An ONNX export called like a transformers model: `model(ids).logits`, computed by ONNX Runtime."""

    def __init__(self, lm):
        self.lm = lm

    def __call__(self, ids: torch.Tensor):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.from_numpy(self.lm.logits(ids.numpy())))


class LlamaCppLogits:
    """A GGUF file called like a transformers model: `model(ids).logits` (batch 1), computed by
    llama.cpp through llama-cpp-python, so a quantized file's perplexity is llama.cpp's own."""

    def __init__(self, path: str, context: int = 1024, threads: int | None = None):
        import os

        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=context, n_batch=min(context, 512), logits_all=True,
                         n_threads=threads or os.cpu_count(), verbose=False)

    def __call__(self, ids: torch.Tensor):
        from types import SimpleNamespace

        if ids.shape[0] != 1:
            raise ValueError("LlamaCppLogits takes one sequence at a time")
        self.llm.reset()
        self.llm.eval(ids[0].tolist())
        return SimpleNamespace(logits=torch.from_numpy(self.llm.scores[: ids.shape[1]].copy())[None])


class OnnxModel:
    """An ONNX export (directory or .onnx/.ort file) ready for `compare`: name, tokenizer, context, model."""

    def __init__(self, path: str):
        import json
        from pathlib import Path

        from transformers import AutoTokenizer

        from device_bench.errors import BenchError
        from device_bench.onnx_lm import OnnxCausalLM
        from toolkit.errors import TensoredgeError

        try:
            lm = OnnxCausalLM(path)
        except BenchError as e:
            raise TensoredgeError(str(e)) from None
        folder = lm.path.parent
        info = json.loads((folder / "export.json").read_text()) if (folder / "export.json").is_file() else {}
        if not (folder / "tokenizer.json").is_file():
            raise TensoredgeError(f"no tokenizer beside {lm.path}: evaluate the export directory written by "
                                  "`tensoredge export onnx`")
        self.name = f"{info.get('model', folder.name)} (ONNX Runtime: {Path(folder.name) / lm.path.name})"
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.eval_context = info.get("eval_context", 1024)
        self.reference = info.get("reference")
        self.runtime = f"onnxruntime {lm.version} ({lm.path.name})"
        self.model = OnnxLogits(lm)
