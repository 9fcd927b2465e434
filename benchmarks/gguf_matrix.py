"""GGUF sizes and llama.cpp decode speed of the default model: dense vs compressed, per weight type,
plus the factorized container's size (f32 and q8_0).

    .venv/bin/python benchmarks/gguf_matrix.py [--model smollm2-135m] [--types f32,q8_0,q4_0] [--out DIR]

Prints a table with the machine named and writes gguf_matrix.json in DIR. Each file is written by
the verified exporters and benched by device_bench in its own process.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from device_bench.files import write_json
from exporters.gguf import export_gguf
from exporters.gguf_container import export_container
from models import DEFAULT_MODEL, REGISTRY, load_model
from toolkit.compress import compress_
from toolkit.pipeline import bench_in_subprocess
from toolkit.progress import say
from toolkit.table import mib, text_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--types", default="f32,q8_0,q4_0")
    p.add_argument("--out", default="tensoredge-out/gguf-matrix")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    out = Path(args.out)
    dense = load_model(args.model)
    compressed = copy.copy(dense)
    compressed.model = copy.deepcopy(dense.model)
    plan = REGISTRY[args.model].demo_plan if args.model in REGISTRY else REGISTRY[DEFAULT_MODEL].demo_plan
    compress_(compressed.model, compressed.family, plan, tokenizer=compressed.tokenizer)
    rows, results = [], []
    for name, loaded in (("dense", dense), ("compressed", compressed)):
        for kind in args.types.split(","):
            path = out / f"{name}-{kind}.gguf"
            say(f"{name} {kind}: export")
            export = export_gguf(loaded, path, kind, progress=say)
            bench = bench_in_subprocess(path, out / f"bench-{name}-{kind}.json", threads=args.threads)
            results.append({"variant": name, "type": kind, "export": export, "bench": bench})
            rows.append([name, kind, mib(export["file_bytes"]), f"{export['top1_agreement']:.2f}",
                         f"{bench['decode_tokens_per_s']['median']:.1f}",
                         f"{bench['prefill_tokens_per_s']['median']:.1f}", mib(bench["peak_rss_sampled_bytes"])])
    containers = []
    for kind in ("f32", "q8_0"):
        container = export_container(compressed, out / f"compressed-container-{kind}.gguf", kind, progress=say)
        containers.append(container)
        rows.append(["container (ship this)", kind, mib(container["file_bytes"]),
                     f"{container['top1_agreement']:.2f}", "-", "-", "-"])
    machine = results[0]["bench"]["machine"]
    write_json({"model": dense.name, "plan": plan, "runs": results, "containers": containers, "machine": machine},
               out / "gguf_matrix.json")
    print(f"{dense.name}, plan {plan}; llama-cpp-python {results[0]['bench']['runtime']['version']}, "
          f"{results[0]['bench']['threads']} threads, {machine['cpu_model']}, {machine['cores_logical']} cores")
    print(text_table(["variant", "type", "file", "top-1 vs PyTorch", "decode tok/s", "prefill tok/s", "peak RSS"],
                     rows))


if __name__ == "__main__":
    main()
