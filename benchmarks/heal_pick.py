"""Which healed run to bring back from the GPU as an int4 file (a call returns 64 MiB, about one file).

    python benchmarks/heal_pick.py LOGS plan1-heal0 plan0-heal0 ...

Reads benchmarks/heal_eval.py's eval-<run>-wikitext2-int4.json and prints the first candidate (list
them smallest first) whose int4 perplexity on the full WikiText-2 test set beats the dense model's
int4 perplexity by 3%; if none does, the candidate with the lowest int4 perplexity.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def int4_perplexity(logs: Path, run: str) -> float | None:
    path = logs / f"eval-{run}-wikitext2-int4.json"
    return json.loads(path.read_text())["scores"]["model"]["perplexity"] if path.is_file() else None


def main() -> None:
    logs, candidates = Path(sys.argv[1]), sys.argv[2:]
    dense = int4_perplexity(logs, "dense")
    scored = [(run, ppl) for run in candidates if (ppl := int4_perplexity(logs, run)) is not None]
    if not scored:
        sys.exit("no candidate has an int4 evaluation")
    for run, ppl in scored:
        print(f"{run}: int4 perplexity {ppl:.3f} (dense int4 {dense})", file=sys.stderr)
    good = [run for run, ppl in scored if dense is not None and ppl <= 0.97 * dense]
    print(good[0] if good else min(scored, key=lambda item: item[1])[0])


if __name__ == "__main__":
    main()
