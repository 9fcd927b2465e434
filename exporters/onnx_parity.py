"""The gates an ONNX export passes before it is written: full logits, cached decode, greedy tokens."""

from __future__ import annotations

import copy

import numpy as np
import torch

from device_bench.generate import generate_ids
from device_bench.onnx_lm import OnnxCausalLM
from toolkit.errors import TensoredgeError

PARITY_SHAPES = ((1, 5), (2, 17))  # random prompts (batch, seq) for the full-logits check
CACHED_PREFIX, CACHED_STEPS = 9, 4  # prefill this many tokens, then decode one at a time
GREEDY_PROMPT, GREEDY_TOKENS = 8, 32
# An export may be this many times as far from float64 as PyTorch fp32 gets. Both are correct fp32
# programs; their rounding differs with summation order: on SmolLM2 with svd-llm factors (20% of FC
# removed; residual activations reach 2e4) ONNX Runtime's MLAS GEMM lands 2.8x further from float64
# than PyTorch does (6.2e-4 vs 2.2e-4 on logits up to 31), inside one low-rank down_proj. A 0.1%
# different model is 20x beyond this.
FLOAT64_SLACK = 5.0
# int8/int4 at accuracy_level > 0: MatMulNBits quantizes activations to int8 per block, so the file
# differs from PyTorch computing with its own dequantized weights by that rounding, not more.
# A wrong graph or wrong weights give errors near 1; top-1 of a near-uniform (random) model is fragile.
# The error is measured on text prompts where the model has a tokenizer (random tokens give activations no
# text gives) and on logits centred per position (softmax ignores a common offset: on random tokens that
# offset made a healed SmolLM2 file look 2x further off than an unhealed one that was in fact further off).
QUANTIZED_LIMITS = {"relative_logit_error": 0.05, "top1_agreement": 0.8, "cached_vs_full_relative": 0.05}
AGREEMENT_SHAPE = (2, 33)  # prompts (batch, seq) of the reduced-precision gates


def _ids(vocab: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)


def _torch_logits(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()


class Reference:
    """PyTorch's logits in fp32 and, only when asked, in float64: the function both fp32 programs
    approximate, so each one's own rounding error can be measured."""

    def __init__(self, model: torch.nn.Module):
        self.model, self._model64 = model, None

    def fp32(self, ids: np.ndarray) -> np.ndarray:
        return _torch_logits(self.model, ids)

    def fp64(self, ids: np.ndarray) -> np.ndarray:
        if self._model64 is None:
            self._model64 = copy.deepcopy(self.model).double()
        with torch.inference_mode():
            return self._model64(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


def _within(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> tuple[bool, float]:
    diff = np.abs(got.astype(np.float32) - expected)
    return bool(np.all(diff <= atol + rtol * np.abs(expected))), float(diff.max())


def _float64_judgement(cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], ref: Reference,
                       atol: float, rtol: float, slack: float) -> dict:
    """For exports outside the fp32 tolerance: over all the gate's inputs, the export's largest
    distance from float64 PyTorch must be at most `slack` times PyTorch fp32's largest (the fp32
    rounding floor of this model); a wrong graph is far beyond it."""
    ours = theirs = 0.0
    for _what, ids, got, expected in cases:
        exact = ref.fp64(ids)
        ours = max(ours, float(np.abs(got - exact).max()))
        theirs = max(theirs, float(np.abs(expected - exact).max()))
    if ours > slack * theirs:
        failed = ", ".join(what for what, _, got, expected in cases if not _within(got, expected, atol, rtol)[0])
        raise TensoredgeError(f"{failed} differ from PyTorch beyond {atol:g} + {rtol:g}*|logit|, and from float64 "
                              f"PyTorch by {ours:.2e}, over {slack:g}x PyTorch fp32's own {theirs:.2e}: not written")
    return {"export": ours, "pytorch_fp32": theirs, "slack": slack}


def cached_logits(lm: OnnxCausalLM, ids: np.ndarray, prefix: int) -> np.ndarray:
    """Logits of `ids` (batch, seq): the first `prefix` in one pass, the rest one token at a time."""
    logits, past = lm.forward(ids[:, :prefix])
    steps = [logits]
    for t in range(prefix, ids.shape[1]):
        logits, past = lm.forward(ids[:, t:t + 1], past)
        steps.append(logits)
    return np.concatenate(steps, axis=1)


def torch_greedy(model: torch.nn.Module, prompt: np.ndarray, tokens: int) -> list[int]:
    """PyTorch's greedy continuation with its own KV cache, never stopping early."""
    ids = torch.from_numpy(prompt[None, :])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return out[0, prompt.size:].tolist()


def check_parity(lm: OnnxCausalLM, model: torch.nn.Module, vocab: int, atol: float, rtol: float,
                 slack: float = FLOAT64_SLACK) -> dict:
    """fp32 gates: logits, cached decode = full recomputation, 32 greedy tokens = PyTorch's.

    Logits pass within atol + rtol*|logit| of PyTorch fp32; if any input is outside, the export is
    judged against float64 PyTorch instead (`_float64_judgement`)."""
    ref = Reference(model)
    cases = []  # (what, ids, export's logits, PyTorch fp32 logits)
    for seed, shape in enumerate(PARITY_SHAPES):
        ids = _ids(vocab, shape, seed)
        cases.append(("ONNX logits", ids, lm.logits(ids), ref.fp32(ids)))
    ids = _ids(vocab, (2, CACHED_PREFIX + CACHED_STEPS), 7)
    cases.append(("cached-decode logits", ids, cached_logits(lm, ids, CACHED_PREFIX), ref.fp32(ids)))
    checked = [_within(got, expected, atol, rtol) for _, _, got, expected in cases]
    result = {"max_abs_logit_diff": max(worst for _, worst in checked[:-1]),
              "max_abs_cached_diff": checked[-1][1], "greedy_tokens_equal": GREEDY_TOKENS}
    if not all(ok for ok, _ in checked):
        result["float64"] = _float64_judgement(cases, ref, atol, rtol, slack)
    prompt = _ids(vocab, (1, GREEDY_PROMPT), 11)[0]
    expected = torch_greedy(model, prompt, GREEDY_TOKENS)
    got = list(generate_ids(lm, prompt, GREEDY_TOKENS))
    if got != expected:
        at = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        raise TensoredgeError(f"ONNX greedy tokens differ from PyTorch's at step {at + 1} of {GREEDY_TOKENS}: "
                              "not written")
    return result


def text_prompts(tokenizer, vocab: int, shape: tuple[int, int] = AGREEMENT_SHAPE) -> np.ndarray | None:
    """`shape` prompts cut from the start of WikiText-2 valid (calibration text, never test), or None where
    the tokenizer's ids do not fit the model's vocabulary (random test models) or the text is too short."""
    from toolkit.data import wikitext2

    needed = shape[0] * shape[1]
    ids = tokenizer(wikitext2("valid")[: 40 * needed], add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < needed or max(ids[:needed]) >= vocab:
        return None
    return np.asarray(ids[:needed], dtype=np.int64).reshape(shape)


def agreement(lm: OnnxCausalLM, model: torch.nn.Module, vocab: int, prompts: np.ndarray | None = None) -> dict:
    """How close a reduced-precision export is to PyTorch fp32 on `prompts` (random ones if None), with
    logits centred per position, and to itself cached."""
    ids = _ids(vocab, AGREEMENT_SHAPE, 5) if prompts is None else prompts
    got, expected = lm.logits(ids), _torch_logits(model, ids)
    centred = lambda x: x - x.mean(-1, keepdims=True)  # noqa: E731
    relative = float(np.linalg.norm(centred(got) - centred(expected)) / np.linalg.norm(centred(expected)))
    top1 = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    own_cached = float(np.abs(cached_logits(lm, ids, 25) - got).max() / np.abs(got).max())
    return {"relative_logit_error": relative, "top1_agreement": top1, "cached_vs_full_relative": own_cached}


def check_agreement(lm: OnnxCausalLM, model: torch.nn.Module, vocab: int, limits: dict, precision: str,
                    reference: str = "PyTorch fp32", prompts: np.ndarray | None = None) -> dict:
    """Refuse a reduced-precision export whose agreement with `model` falls outside `limits`."""
    found = agreement(lm, model, vocab, prompts)
    bad = [f"{k} {found[k]:.3g} (limit {v:g})" for k, v in limits.items()
           if (found[k] < v if k == "top1_agreement" else found[k] > v)]
    if bad:
        raise TensoredgeError(f"{precision} export is too far from {reference}: {', '.join(bad)}; not written")
    return found


def check_quantized(lm: OnnxCausalLM, quantized: torch.nn.Module, model: torch.nn.Module, vocab: int, fmt,
                    atol: float, rtol: float, slack: float = FLOAT64_SLACK, prompts: np.ndarray | None = None) -> dict:
    """Gate of an int8/int4 export against `quantized` (PyTorch with the file's dequantized weights):
    the full fp32 parity gate when MatMulNBits computes in float (accuracy_level 0), else the
    stated QUANTIZED_LIMITS. Its agreement with the float `model` is recorded, not gated: that is
    the quantization's own cost, which perplexity measures properly."""
    if fmt.accuracy_level == 0:
        found = {"parity": check_parity(lm, quantized, vocab, atol, rtol, slack)}
    else:
        found = {"limits": QUANTIZED_LIMITS,
                 "agreement": check_agreement(lm, quantized, vocab, QUANTIZED_LIMITS, fmt.name,
                                              "PyTorch computing with its quantized weights", prompts)}
    found["prompts"] = "random tokens" if prompts is None else "WikiText-2 valid"
    found["vs_float_model"] = agreement(lm, model, vocab, prompts)
    return found
