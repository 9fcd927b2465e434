"""Evaluate many models against one reference on the full held-out texts, in one process.

    python benchmarks/heal_eval.py --reference DENSE --model plan0=PATH --model plan0-heal1=PATH ... \
        --device cuda --quant int4 --out LOGS

For each model, each held-out text (WikiText-2 test, Alice) and each of float / fake-quantized
weights, writes LOGS/eval-<name>-<text>[-<quant>].json in the shape `tensoredge eval --json` writes.
The reference is loaded once (`tensoredge eval` per model would load it every time);
`--model dense=DENSE` scores the reference itself (float, and fake-quantized against float). Windows go through the GPU in batches, so the
full WikiText-2 test set takes seconds per model.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from toolkit.checkpoint import open_model
from toolkit.data import EVAL_TEXTS, text_ids
from toolkit.evaluate import compare, default_batch, text_windows
from toolkit.files import atomic_path
from toolkit.progress import say
from toolkit.quant import quant_aware


def quant_mode(mode: str, default_block: int) -> tuple[int, int, bool]:
    """`int4`, `int8`, `int4-zp`, `int4-b64`, `int4-zp-b64` -> (bits, block, symmetric); "" -> (0, block, True)."""
    if not mode:
        return 0, default_block, True
    name, *options = mode.split("-")
    if name not in ("int4", "int8") or any(o != "zp" and not (o[:1] == "b" and o[1:].isdigit()) for o in options):
        raise SystemExit(f"error: --quant {mode!r}: use int4 or int8, then -zp and/or -b<block>, e.g. int4-b64")
    block = next((int(o[1:]) for o in options if o.startswith("b")), default_block)
    return int(name[3:]), block, "zp" not in options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="the dense model (teacher)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a model to score")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quant", default="int4", help="also score with weights fake-quantized so: int4, int8, "
                                                        "int4-zp (zero points), int4-b64 (blocks of 64, else "
                                                        "--quant-block), comma-separated ('' for none)")
    parser.add_argument("--quant-block", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, help="first N tokens of each text (default: all)")
    parser.add_argument("--context", type=int, help="window length (default: the model's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    reference = open_model(args.reference)
    reference.model.to(args.device)
    context = args.context or reference.eval_context
    texts = {name: text_ids(reference.tokenizer, name) for name in EVAL_TEXTS}
    modes = [""] + [q for q in args.quant.split(",") if q]
    progress = None if args.device.startswith("cuda") else say  # seconds on a GPU; tens of minutes on a CPU
    for entry in args.model:
        name, _, path = entry.partition("=")
        loaded = open_model(path)  # its own copy, even of the reference: fake quantization changes it
        loaded.model.to(args.device)
        for text, ids in texts.items():
            windows, setup = text_windows(reference.tokenizer, text, args.max_tokens, context, every=ids)
            for quant in modes:
                bits, block, symmetric = quant_mode(quant, args.quant_block)
                scope = quant_aware(loaded.model, bits, block, symmetric) if quant else nullcontext()
                with scope:
                    scores = compare(reference.model, {"model": loaded.model}, windows, device=args.device,
                                     batch=default_batch(args.device), progress=progress)
                scores["reference"]["name"] = reference.name
                result = {"model": loaded.name, "runtime": "pytorch", "dataset": text, "device": args.device, **setup,
                          "fake_quant": {"bits": bits, "block": block, "symmetric": symmetric}
                          if quant else None,
                          "scores": scores}
                out = args.out / f"eval-{name}-{text}{'-' + quant if quant else ''}.json"
                with atomic_path(out) as tmp:
                    tmp.write_text(json.dumps(result, indent=2) + "\n")
                say(f"{name} {text} {quant or 'float'}: perplexity {scores['model']['perplexity']:.3f} "
                    f"(reference {scores['reference']['perplexity']:.3f}) on {setup['tokens']:,} tokens")
        loaded.model.to("cpu")


if __name__ == "__main__":
    main()
