"""Which token counts and weighting the frequency-tiered table (`svd-tiered`) needs, training-free, on
WikiText-2 test and Alice (docs/healing.md, sixth session):

    python benchmarks/tiered_head.py                 # first 2,048 tokens of each text, 2 threads: ~10 min
    python benchmarks/tiered_head.py --tokens 4096

Variants at ratio 2: counts from WikiText-2 valid or valid + books (equal shares); rows weighted by
count + 1 or not (plain SVD per tier); the input rows tiered too (tied) or kept exact (an untied table,
only the head tiered). Writes benchmarks/results/tiered_head.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from device_bench.files import write_json  # noqa: E402
from device_bench.machine import machine_info  # noqa: E402
from toolkit.checkpoint import open_model  # noqa: E402
from toolkit.compress import svd_tiered  # noqa: E402
from toolkit.compress.context import Context  # noqa: E402
from toolkit.compress.registry import METHODS  # noqa: E402
from toolkit.compress.shared_head import SharedHead  # noqa: E402
from toolkit.compress.spec import parse_spec  # noqa: E402
from toolkit.compress.tt_embedding import token_counts  # noqa: E402
from toolkit.evaluate import compare, text_windows  # noqa: E402
from toolkit.progress import say  # noqa: E402
from toolkit.table import text_table  # noqa: E402

VARIANTS = [  # label, calibration texts, weighted, exact input rows, extra spec
    ("valid counts", ("valid",), True, False, ""),
    ("valid counts, exact input", ("valid",), True, True, ""),
    ("valid+books counts", ("valid", "books"), True, False, ""),
    ("valid+books counts, exact input", ("valid", "books"), True, True, ""),
    ("valid+books counts, plain SVD", ("valid", "books"), False, False, ""),
    ("valid+books counts, plain SVD, exact=8192", ("valid", "books"), False, False, ",exact=8192"),
]


class TieredHead(torch.nn.Module):
    """Only the head contracts through the tiers; the input table stays exact (untied)."""

    def __init__(self, tiered: torch.nn.Module):
        super().__init__()
        self.tiered = tiered

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tiered.project(hidden)


def variant(dense, tokenizer, calibration, weighted: bool, exact_input: bool, extra: str, ratio: float):
    model = copy.deepcopy(dense)
    ctx = Context(model, "llama", tokenizer, calibration=calibration)
    ctx.cache["token_counts"] = token_counts(ctx, model.config.vocab_size)
    table = model.model.embed_tokens
    real = svd_tiered.weighted_factors
    if not weighted:
        svd_tiered.weighted_factors = lambda rows, weight: real(rows, torch.ones_like(weight))
    try:
        tiered = METHODS["svd-tiered"].compress(table, parse_spec(f"svd-tiered:ratio={ratio:g}{extra}"), ctx)
    finally:
        svd_tiered.weighted_factors = real
    if exact_input:
        model.lm_head = TieredHead(tiered)
    else:
        model.model.embed_tokens, model.lm_head = tiered, SharedHead(tiered, "model.embed_tokens")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--ratio", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/tiered_head.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = open_model("smollm2-135m")
    dense = loaded.model.eval()
    models = {label: variant(dense, loaded.tokenizer, cal, weighted, exact, extra, args.ratio)
              for label, cal, weighted, exact, extra in VARIANTS}
    results = {}
    for text in ("wikitext2", "alice"):
        windows, setup = text_windows(loaded.tokenizer, text, args.tokens, 1024, 512)
        say(f"{text}: {len(models)} variants on {setup['tokens']:,} tokens")
        results[text] = compare(dense, models, windows, progress=say) | {"setup": setup}
    rows = [[label, f"{results['wikitext2'][label]['perplexity']:.2f}", f"{results['wikitext2'][label]['kl']:.3f}",
             f"{results['alice'][label]['perplexity']:.2f}", f"{results['alice'][label]['kl']:.3f}"] for label in models]
    rows.insert(0, ["dense", f"{results['wikitext2']['reference']['perplexity']:.2f}", "-",
                    f"{results['alice']['reference']['perplexity']:.2f}", "-"])
    print(text_table(["variant", "WikiText-2", "KL", "Alice", "KL"], rows))
    write_json({"command": "python benchmarks/tiered_head.py " + " ".join(sys.argv[1:]), "ratio": args.ratio,
                "tokens": args.tokens, "machine": machine_info(args.threads), "results": results}, args.out)


if __name__ == "__main__":
    main()
