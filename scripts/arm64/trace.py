"""Greedy tokens and every step's logits of an ONNX export, through device_bench alone (board-side deps).

`python trace.py EXPORT --prompt TEXT --steps N --out PREFIX` writes PREFIX.json (prompt ids, tokens)
and PREFIX.npy (the logits each token was chosen from, float32). `make arm64-check` runs it on the
host and in the arm64 root on the same export and compares the two.
"""

import argparse
import json

import numpy as np

from device_bench.generate import generate_ids, load_tokenizer
from device_bench.onnx_lm import OnnxCausalLM


class Recorder:
    """An OnnxCausalLM that keeps the last-position logits it returns."""

    def __init__(self, lm: OnnxCausalLM):
        self.lm, self.logits = lm, []

    def reset(self) -> None:
        self.lm.reset()

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.logits.append(self.lm.prefill(ids))
        return self.logits[-1]

    def decode_step(self, token: int) -> np.ndarray:
        self.logits.append(self.lm.decode_step(token))
        return self.logits[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="export directory or .onnx file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="prefix of the .json and .npy written")
    args = p.parse_args()
    recorder = Recorder(OnnxCausalLM(args.model, args.threads))
    prompt = load_tokenizer(args.model).encode(args.prompt).ids
    tokens = list(generate_ids(recorder, prompt, args.steps))  # no EOS stop: every step is compared
    np.save(args.out + ".npy", np.stack(recorder.logits[: len(tokens)]).astype(np.float32))
    with open(args.out + ".json", "w") as f:
        json.dump({"model": args.model, "prompt_ids": prompt, "tokens": tokens}, f)


if __name__ == "__main__":
    main()
