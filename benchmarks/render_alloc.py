"""Markdown tables from benchmarks/gpu_alloc.py's JSON, for docs/fc-compression.md.

    python3 benchmarks/render_alloc.py benchmarks/results/alloc/gpu_alloc-fc.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from toolkit.table import markdown_table, mib

HEADERS = ["variant", "allocation", "target", "removed of FC", "removed of model", "perplexity", "vs dense",
           "KL (test)", "KL (valid, measured)", "KL (predicted)", "layers dense", "head read / token"]


def row_cells(row: dict, dense: float) -> list[str]:
    target = f"{row['remove']:.1%} of {'all' if row['scope'] == 'all' else 'FC'}"
    read = row.get("bytes_read_per_token")
    return [row["name"], row["allocation"], target, f"{row['removed_of_fc']:.1%}", f"{row['removed_of_model']:.1%}",
            f"{row['perplexity']:.2f}", f"{row['perplexity'] / dense - 1:+.1%}", f"{row['kl']:.3f}",
            f"{row['valid_kl']:.3f}", f"{row['predicted_kl']:.3f}", f"{row['layers_dense']} of {row['layers']}",
            f"{mib(read['before']['head'])} -> {mib(read['after']['head'])}" if read else "unchanged"]


def table(result: dict) -> str:
    dense = result["dense"]["perplexity"]
    lines = [f"{result['model']} on {result['device']} (torch {result['torch']}, transformers "
             f"{result['transformers']}): WikiText-2 test, {result['test_tokens']:,} of {result['test_split_tokens']:,} "
             f"tokens (windows of {result['context']} every {result['stride']}), dense perplexity {dense:.2f}. "
             f"Calibration: {result['calibration']}; sensitivity: {result['sensitivity']['measure']} on "
             f"{result['sensitivity']['tokens']:,} held-out valid tokens, measured in {result['sensitivity']['seconds']:.0f} s.",
             "", markdown_table(HEADERS, [row_cells(r, dense) for r in result["rows"]])]
    splits = [r for r in result["rows"] if "split" in r]
    if splits:
        lines += ["", "Whole-model budgets, parameters removed per target:", ""]
        body = []
        for r in splits:
            parts = r["split"]
            body.append([r["name"], ", ".join(f"{k}={v}" for k, v in r["plan"].items()) or "FC only",
                         f"{parts['mlp']['removed'] + parts['attention']['removed']:,}",
                         f"{parts['embedding']['removed']:,}", f"{parts['lm_head']['removed']:,}",
                         f"{parts['total']['removed']:,} ({r['removed_of_model']:.1%})",
                         f"{mib(r['bytes_read_per_token']['before']['total'])} -> "
                         f"{mib(r['bytes_read_per_token']['after']['total'])}"])
        lines.append(markdown_table(["variant", "embedding / head plan", "FC removed", "embedding removed",
                                    "head removed", "total removed", "weights read / token"], body))
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in paths:
        print(table(json.loads(Path(path).read_text())) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
