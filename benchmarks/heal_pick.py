"""Which healed run to bring back from the GPU as a file (a call returns 64 MiB, about one int4 file).

    python benchmarks/heal_pick.py LOGS plan1-heal0 plan0-heal0 ...            # int4, WikiText-2
    python benchmarks/heal_pick.py LOGS RUN... --quant int8-b64 --texts wikitext2 alice --lowest

Reads benchmarks/heal_eval.py's eval-<run>-<text>-<quant>.json and the dense model's at the same
quantization. Each candidate's figure is its worst ratio to the dense model over --texts. Prints the first
candidate (list them smallest first) at or under --margin (default 0.97: 3% better than the dense
model's plain quantization); if none is, or with --lowest, the candidate with the lowest figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def perplexity(logs: Path, run: str, text: str, quant: str) -> float | None:
    path = logs / f"eval-{run}-{text}-{quant}.json"
    return json.loads(path.read_text())["scores"]["model"]["perplexity"] if path.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", type=Path, help="the folder of eval-*.json files")
    p.add_argument("runs", nargs="+", help="candidate runs, preferred (smallest) first")
    p.add_argument("--quant", default="int4", help="the eval files' quantization suffix (int4, int8-b64, ...)")
    p.add_argument("--texts", nargs="+", default=["wikitext2"], help="held-out texts; the worst one counts")
    p.add_argument("--margin", type=float, default=0.97, help="ratio to the dense model a candidate must reach")
    p.add_argument("--lowest", action="store_true", help="the lowest ratio, whatever the order")
    args = p.parse_args()
    dense = {text: perplexity(args.logs, "dense", text, args.quant) for text in args.texts}
    if None in dense.values():
        sys.exit(f"error: no dense eval-dense-<text>-{args.quant}.json in {args.logs} for {', '.join(args.texts)}")
    scored = []
    for run in args.runs:
        ppl = {text: perplexity(args.logs, run, text, args.quant) for text in args.texts}
        if None not in ppl.values():
            worst = max(ppl[text] / dense[text] for text in args.texts)
            scored.append((run, worst))
            print(f"{run}: " + ", ".join(f"{text} {ppl[text]:.3f} (dense {dense[text]:.3f})" for text in args.texts)
                  + f"; worst ratio {worst:.4f}", file=sys.stderr)
    if not scored:
        sys.exit(f"error: no candidate has {args.quant} evaluations on {', '.join(args.texts)}")
    good = [run for run, worst in scored if worst <= args.margin]
    print(good[0] if good and not args.lowest else min(scored, key=lambda item: item[1])[0])


if __name__ == "__main__":
    main()
