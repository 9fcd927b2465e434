"""Offline text generation from a tensoredge ONNX export: onnxruntime + tokenizers + numpy, no torch.

`python -m device_bench.generate EXPORT --prompt TEXT` (or `tensoredge generate --model EXPORT`)
streams the continuation as tokens arrive; greedy by default, or temperature / top-k / top-p
sampling with a seed; stops at the export's EOS token(s). Needs no network.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from device_bench.context import config_context, fit_prompt
from device_bench.errors import BenchError, first_line
from device_bench.files import write_json
from device_bench.interrupt import run_command
from device_bench.onnx_lm import OnnxCausalLM, export_config, model_file


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 0.0,
                top_k: int = 0, top_p: float = 1.0) -> int:
    """The next token from last-position logits: argmax at temperature 0, else a filtered sample."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= kth, logits, -np.inf)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def generate_ids(lm: OnnxCausalLM, prompt: list[int] | np.ndarray, max_new_tokens: int,
                 eos_ids: tuple[int, ...] = (), temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0) -> Iterator[int]:
    """Yield new token ids one at a time (cached decode); stop after an EOS id or max_new_tokens."""
    rng = np.random.default_rng(seed)
    lm.reset()
    logits = lm.prefill(np.asarray(prompt, dtype=np.int64))
    for i in range(max_new_tokens):
        token = sample_next(logits, rng, temperature, top_k, top_p)
        yield token
        if token in eos_ids or i + 1 == max_new_tokens:
            return
        logits = lm.decode_step(token)


def eos_ids_of(lm: OnnxCausalLM, config: dict) -> tuple[int, ...]:
    """EOS ids from the export's config.json, else its ONNX metadata."""
    eos = config.get("eos_token_id")
    if eos is None and "eos_token_ids" in lm.meta:
        eos = [int(x) for x in lm.meta["eos_token_ids"].split(",") if x]
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def load_tokenizer(export: str | Path):
    """tokenizer.json beside the model file; BenchError when it is missing."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BenchError("tokenizers is not installed: pip install tokenizers") from None
    path = model_file(export).parent / "tokenizer.json"
    if not path.is_file():
        raise BenchError(f"no tokenizer.json beside {model_file(export)}: give the export directory written by "
                         "`tensoredge export onnx`")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
        raise BenchError(f"cannot read {path}: {first_line(e)}") from None
    tokenizer.no_truncation()  # a truncation setting in the file would cut the prompt silently
    tokenizer.no_padding()
    return tokenizer


class TextStream:
    """Print decoded text as tokens arrive, holding back incomplete UTF-8 characters."""

    def __init__(self, tokenizer, out: TextIO | None):
        self.tokenizer, self.out, self.ids, self.printed = tokenizer, out, [], ""

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a byte-level token split a character: wait for the rest
            return
        if self.out is not None:
            self.out.write(text[len(self.printed):])
            self.out.flush()
        self.printed = text

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def generate_text(export: str | Path, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0, threads: int | None = None,
                  out: TextIO | None = None, quiet: bool = False, truncate: str | None = None) -> dict:
    """Stream a continuation of `prompt` to `out` (default stdout; nothing if quiet); return the
    prompt, completion, tokens and speed. A prompt that does not fit the context with
    `max_new_tokens` is an error, or with truncate="left" keeps its last tokens."""
    out = None if quiet else out or sys.stdout
    for name, value, ok in (("max_new_tokens", max_new_tokens, max_new_tokens >= 1),
                            ("temperature", temperature, temperature >= 0),
                            ("top_k", top_k, top_k >= 0), ("top_p", top_p, 0 < top_p <= 1)):
        if not ok:
            raise BenchError(f"{name} {value} is out of range (max_new_tokens >= 1, temperature >= 0, "
                             "top_k >= 0, 0 < top_p <= 1)")
    tokenizer = load_tokenizer(export)
    encoded = tokenizer.encode(prompt).ids
    prompt_ids = fit_prompt(encoded, max_new_tokens, config_context(export_config(export)), truncate)
    lm = OnnxCausalLM(export, threads)
    stream = TextStream(tokenizer, out)
    if out is not None:
        out.write(prompt)
        out.flush()
    start = time.perf_counter()
    for token in generate_ids(lm, prompt_ids, max_new_tokens, eos_ids_of(lm, export_config(export)),
                              temperature, top_k, top_p, seed):
        stream.add(token)
    seconds = time.perf_counter() - start
    if out is not None:
        out.write("\n")
    return {"model": str(lm.path), "prompt": prompt, "completion": stream.text, "tokens": stream.ids,
            "prompt_tokens": len(prompt_ids), "prompt_tokens_dropped": len(encoded) - len(prompt_ids),
            "seconds": seconds, "kv_cache": lm.kv_cache,
            "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}}


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """Sampling options shared with `tensoredge generate`."""
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: onnxruntime's choice)")
    p.add_argument("--truncate", choices=["left"], help="a prompt too long for the context with --max-new-tokens: "
                                                        "keep its last tokens (default: refuse it)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_bench.generate", description=__doc__.splitlines()[0])
    p.add_argument("model", metavar="EXPORT", help="export directory (or its .onnx/.ort file)")
    add_generate_arguments(p)
    p.add_argument("--json", metavar="OUT", help="also write the prompt, completion and token ids as JSON to OUT")
    args = p.parse_args(argv)

    def body() -> int:
        try:
            result = generate_text(args.model, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                   args.top_p, args.seed, args.threads, truncate=args.truncate)
            if args.json:
                write_json(result, args.json)
        except BenchError as e:
            print(f"error: {first_line(e)}", file=sys.stderr)
            return 2
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
