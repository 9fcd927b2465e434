"""Speed of TRAWL's Tucker (toolkit.compress.tucker: HOOI with Gram eigendecompositions) against
tensorly's `tucker(init="svd")`, on SmolLM2-135M's own stacked weights at the FC grid's 10% point.

    PYTHONPATH=. python benchmarks/tucker_speed.py [--groups self_attn.k_proj,self_attn.q_proj] [--threads 2]

Both run the same algorithm (HOSVD start, up to 10 HOOI sweeps, tol 1e-7) in float64; the output
gives each one's seconds, the relative reconstruction error and the largest factor difference, with
machine info, and writes benchmarks/results/tucker_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.compress.spec import parse_spec  # noqa: E402
from toolkit.compress.targets import linear_weight  # noqa: E402
from toolkit.compress.trawl import ranks_for  # noqa: E402
from toolkit.compress.tucker import tucker  # noqa: E402
from toolkit.files import atomic_path  # noqa: E402


def error(stack: torch.Tensor, core: torch.Tensor, factors: list[torch.Tensor]) -> float:
    return float((torch.einsum("abc,la,ob,ic->loi", core, *factors) - stack).norm() / stack.norm())


def main() -> None:
    import tensorly
    from tensorly.decomposition import tucker as tensorly_tucker

    from models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="self_attn.k_proj,self_attn.q_proj", help="linears to stack, comma-separated")
    p.add_argument("--removal", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tucker_speed.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m").model
    spec = parse_spec(f"trawl:decomp=tucker,ratio={1 / (1 - args.removal):.6f}")
    rows = []
    for group in args.groups.split(","):
        weights = [linear_weight(layer.get_submodule(group))[0] for layer in model.model.layers]
        stack = torch.stack(weights).double()
        ranks = list(ranks_for("tucker", tuple(stack.shape), spec))
        t0 = time.perf_counter()
        core, factors = tucker(stack, ranks)
        ours = time.perf_counter() - t0
        with tensorly.backend_context("pytorch"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Trying to compute SVD")
            t0 = time.perf_counter()
            their_core, theirs = tensorly_tucker(stack, rank=ranks, init="svd", n_iter_max=10, tol=1e-7, random_state=0)
            reference = time.perf_counter() - t0
        row = {"group": group, "shape": list(stack.shape), "ranks": ranks, "seconds_ours": ours,
               "seconds_tensorly": reference, "speedup": reference / ours, "error_ours": error(stack, core, factors),
               "error_tensorly": error(stack, their_core, theirs),
               "largest_factor_difference": max(float((a - b).abs().max()) for a, b in zip(factors, theirs))}
        rows.append(row)
        print(f"{group} {row['shape']} ranks {ranks}: ours {ours:.1f} s, tensorly {reference:.1f} s "
              f"({row['speedup']:.1f}x); error {row['error_ours']:.6f} vs {row['error_tensorly']:.6f}; "
              f"factors differ by at most {row['largest_factor_difference']:.1e}")
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__, "tensorly": tensorly.__version__},
              "removal": args.removal, "rows": rows, "command": " ".join(sys.argv)}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
