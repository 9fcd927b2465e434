"""Speed of the batched TT-SVD (toolkit.compress.tt_embedding.tt_svd) against tensorly's
`tensor_train` row by row and against batched full SVDs, at equal reconstruction error.

    PYTHONPATH=. python benchmarks/tt_svd_speed.py [--rows 50257 --dim 768 --loop-rows 5000 --repeats 3]

Prints machine info, medians, and writes benchmarks/results/tt_svd_speed.json. The tensorly loop is
timed on --loop-rows rows and extrapolated to the whole table (labelled so). CUDA is timed when a
CUDA device is present, otherwise the output says it was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.compress.tt_embedding import contract, ranks_for_budget, tensor_shape, tt_svd  # noqa: E402
from toolkit.files import atomic_path  # noqa: E402


def batched_full_svd(rows: torch.Tensor, shape: tuple[int, ...], ranks: list[int]) -> list[torch.Tensor]:
    """The previous implementation: torch.linalg.svd of every unfolding, then truncation."""
    count, rest, cores, left = rows.shape[0], rows.reshape(rows.shape[0], 1, -1), [], 1
    for n, cap in zip(shape[:-1], ranks):
        u, s, vh = torch.linalg.svd(rest.reshape(count, left * n, -1), full_matrices=False)
        rank = min(cap, s.shape[-1])
        cores.append(u[:, :, :rank].reshape(count, left, n, rank))
        rest, left = s[:, :rank, None] * vh[:, :rank, :], rank
    cores.append(rest.reshape(count, left, shape[-1], 1))
    return cores


def tensorly_rows(rows: np.ndarray, shape: tuple[int, ...], ranks: list[int]) -> np.ndarray:
    """Reconstructed rows from tensorly's tensor_train applied to each row separately."""
    import tensorly as tl
    from tensorly.decomposition import tensor_train

    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        out[i] = tl.tt_to_tensor(tensor_train(row.reshape(shape), rank=[1, *ranks, 1])).reshape(-1)
    return out


def relative_error(approx: torch.Tensor, rows: torch.Tensor) -> float:
    return ((approx.double() - rows.double()).norm() / rows.double().norm()).item()


def timed(fn, repeats: int, sync=lambda: None) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return times, result


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_before": os.getloadavg()}
    try:
        model = next(line for line in open("/proc/cpuinfo") if line.startswith("model name"))
        info["cpu_model"] = model.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ratio", type=float, default=4.0, help="ranks from this per-row ratio")
    parser.add_argument("--loop-rows", type=int, default=5000, help="rows the tensorly loop is timed on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/tt_svd_speed.json")
    args = parser.parse_args()

    info = machine()
    print(f"machine: {info.get('cpu_model', info['processor'])}, {info['cpus']} CPUs, torch "
          f"{info['torch']} ({info['torch_threads']} threads), load average {info['load_average_before']}")
    torch.manual_seed(0)
    table = torch.randn(args.rows, args.dim) * 0.02
    shape = tensor_shape(args.dim)
    ranks = ranks_for_budget(shape, args.dim / args.ratio)
    padded = torch.nn.functional.pad(table, (0, int(np.prod(shape)) - args.dim))
    print(f"table {args.rows} x {args.dim} (random normal), tensor shape {shape}, ranks {ranks}")
    results: dict = {"machine": info, "rows": args.rows, "dim": args.dim, "shape": list(shape), "ranks": ranks}

    times, result = timed(lambda: tt_svd(padded, shape, ranks), args.repeats)
    ours = {"median_s": statistics.median(times), "times_s": times,
            "relative_error": relative_error(contract(result.cores, args.dim), table)}
    times, cores = timed(lambda: batched_full_svd(padded, shape, ranks), max(1, args.repeats - 2))
    full = {"median_s": statistics.median(times), "times_s": times,
            "relative_error": relative_error(contract(cores, args.dim), table)}

    subset = padded[: args.loop_rows]
    start = time.perf_counter()
    loop_rows = tensorly_rows(subset.numpy(), shape, ranks)
    loop_seconds = time.perf_counter() - start
    loop = {"rows_timed": len(subset), "seconds_on_rows": loop_seconds,
            "extrapolated_s": loop_seconds * args.rows / len(subset),
            "relative_error_on_rows": relative_error(torch.from_numpy(loop_rows)[:, : args.dim], table[: len(subset)]),
            "ours_relative_error_on_rows": relative_error(contract([c[: len(subset)] for c in result.cores],
                                                                   args.dim), table[: len(subset)])}
    results |= {"batched_gram_eigh": ours, "batched_full_svd": full, "tensorly_loop": loop}

    if torch.cuda.is_available():
        device = torch.device("cuda")
        gpu_rows = padded.to(device)
        tt_svd(gpu_rows, shape, ranks)  # warm-up
        times, gpu = timed(lambda: tt_svd(gpu_rows, shape, ranks), args.repeats, torch.cuda.synchronize)
        results["cuda"] = {"device": torch.cuda.get_device_name(0), "median_s": statistics.median(times),
                           "times_s": times,
                           "relative_error": relative_error(contract(gpu.cores, args.dim).cpu(), table)}
    else:
        results["cuda"] = None

    print(f"batched Gram+eigh TT-SVD (ours): median {ours['median_s']:.3f} s over {args.repeats}, "
          f"relative error {ours['relative_error']:.6f}")
    print(f"batched full SVD (previous):      median {full['median_s']:.3f} s, "
          f"relative error {full['relative_error']:.6f}")
    print(f"tensorly tensor_train per row:    {loop_seconds:.3f} s on {len(subset)} rows -> "
          f"{loop['extrapolated_s']:.2f} s for {args.rows} rows (EXTRAPOLATED), relative error on those rows "
          f"{loop['relative_error_on_rows']:.6f} (ours on the same rows {loop['ours_relative_error_on_rows']:.6f})")
    print(f"speed-up over the tensorly loop: {loop['extrapolated_s'] / ours['median_s']:.1f}x; "
          f"over batched full SVD: {full['median_s'] / ours['median_s']:.1f}x")
    if results["cuda"]:
        print(f"CUDA ({results['cuda']['device']}): median {results['cuda']['median_s']:.4f} s, relative error "
              f"{results['cuda']['relative_error']:.6f}")
    else:
        print("CUDA: not measured (no CUDA device on this machine)")
    results["load_average_after"] = os.getloadavg()
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
