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


def text_windows(tokenizer, text: str, max_tokens: int | None, context: int, stride: int | None = None,
                 every: list[int] | None = None) -> tuple[list[Window], dict]:
    """Strided windows over the first `max_tokens` (all if None) tokens of held-out text `text`
    (toolkit.data.EVAL_TEXTS), and the settings used; `every` is the text's ids if already at hand."""
    from toolkit.data import text_ids
    from toolkit.errors import TensoredgeError

    stride = stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise TensoredgeError(f"--stride {stride} must be between 1 and the context ({context})")
    every = every if every is not None else text_ids(tokenizer, text)
    ids = every[:max_tokens] if max_tokens else every
    setup = {"text": text, "context": context, "stride": stride, "tokens": len(ids), "split_tokens": len(every)}
    return strided_windows(ids, context, stride), setup


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
    batch: int = 1,
) -> dict[str, dict]:
    """Perplexity of the reference and every candidate; KL(ref || cand) and top-1 agreement per token.

    The models must already be on `device`; the window's ids are put there. Up to `batch` windows
    of the same length go through each forward pass together (on a GPU the whole WikiText-2 test
    set then takes seconds); the sums stay on the device until the end."""
    sums = {name: torch.zeros(3, dtype=torch.float64, device=device) for name in ("reference", *candidates)}
    tokens, done, start = 0, 0, time.time()
    for group in _groups(windows, max(1, batch)):
        first = group[0].first_scored
        ids = torch.tensor([w.ids for w in group], device=device)
        targets = ids[:, first + 1 :]
        tokens += targets.numel()
        ref_logits = reference(ids).logits
        outputs = {name: model(ids).logits for name, model in candidates.items()}
        for row in range(len(group)):
            ref_logp = F.log_softmax(ref_logits[row, first:-1].float(), dim=-1)
            sums["reference"][0] -= ref_logp.gather(-1, targets[row, :, None]).sum()
            for name, logits in outputs.items():
                logp = F.log_softmax(logits[row, first:-1].float(), dim=-1)
                sums[name][0] -= logp.gather(-1, targets[row, :, None]).sum()
                sums[name][1] += F.kl_div(logp, ref_logp, log_target=True, reduction="sum")
                sums[name][2] += (logp.argmax(-1) == ref_logp.argmax(-1)).sum()
        before, done = done, done + len(group)
        if progress and (done * 20 // len(windows) > before * 20 // len(windows) or done == len(windows)):
            spent = time.time() - start
            left = f", about {spent / done * (len(windows) - done) / 60:.0f} min left" if done < len(windows) else ""
            progress(f"eval window {done}/{len(windows)} ({spent:.0f} s{left})")
    scores = {}
    for name, values in sums.items():
        nll, kl, agree = values.tolist()
        scores[name] = Scores(nll=nll, kl=kl, agree=int(agree), tokens=tokens)
    return {name: s.summary(with_reference=name != "reference") for name, s in scores.items()}


def _groups(windows: list[Window], batch: int) -> list[list[Window]]:
    """Consecutive windows of equal length and first scored position, at most `batch` to a group."""
    groups: list[list[Window]] = []
    for window in windows:
        last = groups[-1] if groups else None
        if last and len(last) < batch and len(last[0].ids) == len(window.ids) \
                and last[0].first_scored == window.first_scored:
            last.append(window)
        else:
            groups.append([window])
    return groups


def default_batch(device: str) -> int:
    """Windows per forward pass: several on a GPU; one on the CPU, where batching gains nothing."""
    return 16 if str(device).startswith("cuda") else 1


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
