"""The headline comparison (docs/RESULTS.md and its plots), measured in one run on this machine.

    .venv/bin/python benchmarks/headline.py              # about an hour on the 2-core VM
    .venv/bin/python benchmarks/headline.py --reuse      # resume: keep rows already measured in --work

Part 1, the default model (smollm2-135m, real weights): dense and compressed variants, each as
ONNX Runtime fp32/int8 and llama.cpp GGUF, with perplexity and KL against dense PyTorch on the
first --ppl-tokens WikiText-2 test tokens (through each runtime itself), and decode speed, time
to first token, peak RSS and J/token (an estimate on a host without sensors: the meter is named)
from device_bench, each file in its own process. Part 2, GPT-2-124M shapes (random weights):
benchmarks/onnx_decode.py run as part of this run. Part 3, GPU reference rows: the newest JSON
files of benchmarks/run_gpu_reference.sh, which ran on a lent GPU at the date they state.

Bytes read per token (for the roofline fraction) is an estimate: the weights of the file plus
the KV cache at the mean decode context; a runtime that rebuilds a factorized table at load time
(ONNX Runtime folding the shared TT head) reads more than that, so its fraction is a lower bound.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from device_bench.files import write_json  # noqa: E402
from device_bench.machine import machine_info  # noqa: E402
from onnx_decode import kv_bytes_per_token, onnx_weight_bytes, read_bandwidth  # noqa: E402
from toolkit.progress import say  # noqa: E402
from toolkit.table import markdown_table, mib, num  # noqa: E402

# (label, plan for compress_, FC budget (method, fraction removed, allocation) or None)
VARIANTS = [
    ("dense", {}, None),
    ("embedding 2x", {"embedding": "tt:ratio=2,tiers=2,by=freq"}, None),
    ("embedding 3.31x", {"embedding": "tt:ratio=3.31,tiers=2,by=freq"}, None),
    ("embedding 10x", {"embedding": "tt:ratio=10,tiers=2,by=freq"}, None),
    ("FC 10%", {}, ("svd-llm", 0.1, "surgical")),
    ("FC 20%", {}, ("svd-llm", 0.2, "surgical")),
    ("FC 30%", {}, ("svd-llm", 0.3, "uniform")),
    ("embedding 2x + FC 20%", {"embedding": "tt:ratio=2,tiers=2,by=freq"}, ("svd-llm", 0.2, "surgical")),
]
DENSE_GGUF_TYPES = ("f32", "q8_0", "q4_0")  # the llama.cpp baselines
COMPRESSED_GGUF_TYPE = "q8_0"  # llama.cpp runs dense matrices: a compressed model's GGUF is densified
GOAL_PPL_LOSS = 0.05
GOAL_ROOFLINE = 0.70


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").replace("--", "-")


def bench(path: str, out: Path, args: argparse.Namespace) -> dict:
    """device_bench on one file, in its own process (its peak RSS is the runtime's alone)."""
    cmd = [sys.executable, "-m", "device_bench", path, "--json", str(out), "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens),
           "--repeats", str(args.repeats), "--warmup", "1", "--meter", "auto"]
    say(f"bench {path}")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(out.read_text())


def build(label: str, plan: dict, budget, dense) -> object:
    """A copy of the dense model compressed by `plan`, then by the FC budget."""
    from toolkit.compress import compress_
    from toolkit.compress.budget import compress_budget_

    loaded = copy.copy(dense)
    loaded.model = copy.deepcopy(dense.model)
    if plan:
        compress_(loaded.model, loaded.family, plan, tokenizer=loaded.tokenizer, progress=say)
    if budget:
        method, remove, how = budget
        compress_budget_(loaded.model, loaded.family, method, remove, how, tokenizer=loaded.tokenizer, progress=say)
    return loaded


def measure_variant(label: str, plan: dict, budget, dense, windows, args, work: Path) -> dict:
    """Every file of one variant: export (gates included), perplexity/KL through its runtime, bench."""
    from exporters.gguf import export_gguf
    from exporters.onnx import export_onnx
    from toolkit.checkpoint import save_compressed
    from toolkit.counting import count_parameters
    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import LlamaCppLogits, OnnxModel, compare

    folder = work / slug(label)
    folder.mkdir(parents=True, exist_ok=True)
    say(f"== {label}")
    t0 = time.time()
    loaded = dense if label == "dense" else build(label, plan, budget, dense)
    row = {"label": label, "plan": plan, "fc_budget": budget, "compress_s": time.time() - t0,
           "params": count_parameters(loaded.model)["total"]["params"], "files": {}}
    files: dict[str, tuple[str, str, int]] = {}  # name -> (path for device_bench, format, KV element bytes)
    try:
        export_onnx(loaded, folder / "onnx", precisions=("int8",), progress=say)
        files["ONNX fp32"] = (str(folder / "onnx" / "model.onnx"), "onnx", 4)
        files["ONNX int8"] = (str(folder / "onnx" / "model_int8.onnx"), "onnx", 4)
    except TensoredgeError as exc:
        row["files"]["ONNX"] = {"refused": str(exc)}
    for weight_type in DENSE_GGUF_TYPES if label == "dense" else (COMPRESSED_GGUF_TYPE,):
        path = folder / f"model-{weight_type}.gguf"
        try:
            export_gguf(loaded, path, weight_type=weight_type, progress=say)
            files[f"llama.cpp {weight_type.upper()}"] = (str(path), "gguf", 2)  # f16 KV cache
        except TensoredgeError as exc:
            row["files"][f"llama.cpp {weight_type.upper()}"] = {"refused": str(exc)}
    if label == "dense":
        save_compressed(dense, {}, folder / "torch")
        files["PyTorch fp32"] = (f"torch:{folder / 'torch'}", "torch", 4)

    candidates = {}
    for name, (path, fmt, _) in files.items():
        if fmt == "onnx":
            candidates[name] = OnnxModel(path).model
        elif fmt == "gguf":
            candidates[name] = LlamaCppLogits(path, context=args.context, threads=args.threads)
    if label != "dense":
        candidates["PyTorch fp32"] = loaded.model
    say(f"{label}: perplexity and KL through {', '.join(candidates)}")
    scores = compare(dense.model, candidates, windows, progress=say)
    scores["PyTorch fp32"] = scores.get("PyTorch fp32") or scores["reference"]
    for name, (path, fmt, kv_element) in files.items():
        result = bench(path, folder / f"bench-{slug(name)}.json", args)
        file_bytes = Path(path.split(":", 1)[-1]).stat().st_size if fmt != "torch" else None
        weights = (onnx_weight_bytes(Path(path)) if fmt == "onnx" else file_bytes if fmt == "gguf"
                   else result.get("model_bytes"))
        row["files"][name] = {"path": path, "format": fmt, "file_bytes": file_bytes, "weight_bytes": weights,
                              "kv_element_bytes": kv_element, "scores": scores[name], "bench": result}
    if label != "dense":
        row["files"]["PyTorch fp32"] = {"format": "torch", "scores": scores["PyTorch fp32"]}
    return row


def finish_rows(rows: list[dict], config, bandwidth: dict, args) -> None:
    """Add bytes/token and the roofline fraction to every benched file."""
    context = args.prompt_tokens + args.decode_tokens / 2
    for row in rows:
        for entry in row["files"].values():
            b = entry.get("bench") or {}
            if "decode_tokens_per_s" not in b:
                continue
            per_token = entry["weight_bytes"] + kv_bytes_per_token(config, context, entry["kv_element_bytes"])
            entry["bytes_per_token_estimate"] = per_token
            entry["roofline_fraction"] = (per_token * b["decode_tokens_per_s"]["median"]
                                          / (bandwidth["best_gb_per_s"] * 1e9))


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for row in rows:
        for name, e in row["files"].items():
            if "refused" in e:
                out.append([row["label"], name, "refused: " + e["refused"][:90]] + ["-"] * 8)
                continue
            s, b = e.get("scores") or {}, e.get("bench") or {}
            if "failed" in b:
                b = {}
            energy = b.get("energy") or {}
            out.append([row["label"], name, mib(e["file_bytes"]) if e.get("file_bytes") else "-",
                        f"{row['params'] / 1e6:.1f}M", num(s.get("perplexity"), 4), num(s.get("kl"), 3),
                        f"{b['decode_tokens_per_s']['median']:.1f}" if b else "-",
                        f"{b['prefill_s']['median'] * 1e3:.0f} ms" if b else "-",
                        mib(b.get("peak_rss_sampled_bytes")) if b else "-",
                        f"{energy['joules_per_token']:.3f} ({energy.get('kind')}: {energy.get('meter')})"
                        if energy.get("joules_per_token") is not None else "-",
                        f"{e['roofline_fraction']:.0%}" if "roofline_fraction" in e else "-"])
    return out


def goals(rows: list[dict], gpt2: dict | None) -> list[str]:
    """The two headline goals, judged on this run's rows (speed on GPT-2 shapes too)."""
    dense = rows[0]["files"]
    base_ppl = dense["PyTorch fp32"]["scores"]["perplexity"]
    q8 = dense.get("llama.cpp Q8_0", {}).get("bench", {}).get("decode_tokens_per_s", {}).get("median")
    close = [(r["label"], n, e) for r in rows for n, e in r["files"].items()
             if "scores" in e and e.get("bench", {}).get("decode_tokens_per_s")
             and e["scores"]["perplexity"] <= base_ppl * (1 + GOAL_PPL_LOSS)]
    faster = [f"{label} {name} ({e['bench']['decode_tokens_per_s']['median']:.1f} tok/s, perplexity "
              f"{e['scores']['perplexity']:.3f})" for label, name, e in close
              if q8 and e["bench"]["decode_tokens_per_s"]["median"] > q8 and not name.startswith("llama.cpp Q8_0")]
    roof = [f"{r['label']} {n} ({e['roofline_fraction']:.0%})" for r in rows for n, e in r["files"].items()
            if e.get("roofline_fraction", 0) >= GOAL_ROOFLINE]
    roof += [f"GPT-2 shapes: {label} ({e['roofline_fraction']:.0%})" for label, e in (gpt2 or {}).get("rows", {}).items()
             if e.get("roofline_fraction", 0) >= GOAL_ROOFLINE]
    gpt2_rows = (gpt2 or {}).get("rows", {})
    speed = {label: e["bench"]["decode_tokens_per_s"]["median"] for label, e in gpt2_rows.items()}
    gpt2_line = ""
    if "llama.cpp Q8_0" in speed:
        beat = [f"{label} ({v:.1f})" for label, v in speed.items()
                if v > speed["llama.cpp Q8_0"] and not label.startswith("llama.cpp")]
        gpt2_line = (f" On GPT-2 shapes (speed only, random weights), faster than llama.cpp Q8_0 "
                     f"({speed['llama.cpp Q8_0']:.1f} tok/s): " + (", ".join(beat) if beat else "none") + ".")
    return [
        f"- **Decode faster than llama.cpp Q8_0 ({num(q8, 3)} tok/s) with perplexity within "
        f"{GOAL_PPL_LOSS:.0%} of dense ({base_ppl:.3f}):** " + ("met by " + "; ".join(faster) if faster else
                                                                  "not met on the default model in this run.") + gpt2_line,
        f"- **At least {GOAL_ROOFLINE:.0%} of the bandwidth roofline:** " + ("met by " + "; ".join(roof) if roof
                                                                              else "not met by any row."),
    ]


def plots(rows: list[dict], machine: str, out_dir: Path) -> list[str]:
    from toolkit.report import PLOTS, Point, draw

    files = []
    for plot in PLOTS[:2]:  # size vs perplexity, decode speed vs size
        points = []
        for row in rows:
            for name, e in row["files"].items():
                b = e.get("bench") or {}
                if not e.get("file_bytes") or "decode_tokens_per_s" not in b:
                    continue
                label, fmt = f"{row['label']}: {name}", name.split()[0]
                if plot.file.startswith("size_vs_perplexity"):
                    points.append(Point(e["file_bytes"] / 2**20, e["scores"]["perplexity"], label, fmt))
                else:
                    d = b["decode_tokens_per_s"]
                    points.append(Point(e["file_bytes"] / 2**20, d["median"], label, fmt, spread=(d["min"], d["max"])))
        path = out_dir / f"results-{plot.file}"
        draw(plot, points, machine, path)
        files.append(path.name)
    return files


def gpu_rows() -> tuple[list[list[str]], list[str]]:
    """The GPU reference runs on record (benchmarks/results/gpu): a row per bench, newest file first.

    A file is one bench (the first, eager-only runs) or a bench set from benchmarks/gpu_reference.py.
    """
    from toolkit.report import BENCH_SET_SCHEMA

    rows, sources = [], []
    files = [(p, json.loads(p.read_text())) for p in (REPO / "benchmarks" / "results" / "gpu").rglob("gpu-*.json")]
    for path, data in sorted(files, key=lambda f: f[1]["timestamp"], reverse=True):
        for r in data["runs"] if data.get("schema") == BENCH_SET_SCHEMA else [data]:
            e, rt = r.get("energy") or {}, r["runtime"]
            above = e.get("joules_per_token_above_idle")
            rows.append([r["timestamp"][:16].replace("T", " "), r["variant"], rt["device"],
                         f"{rt.get('path', 'eager')} {rt.get('dtype', 'fp32')}", str(r.get("batch_size", 1)),
                         mib(r["model_bytes"]), f"{r['prefill_s']['median'] * 1e3:.1f} ms",
                         f"{r.get('decode_tokens_per_s_per_stream', r['decode_tokens_per_s'])['median']:.1f}",
                         f"{r['decode_tokens_per_s']['median']:.1f}",
                         f"{e['joules_per_token']:.4f} ({e.get('kind')}, {e.get('meter')})" if e else "-",
                         f"{above:.4f}" if above is not None else "-"])
        sources.append(str(path.relative_to(REPO)))
    return rows, sources


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ppl-tokens", type=int, default=2048, help="WikiText-2 test tokens for perplexity and KL")
    p.add_argument("--context", type=int, default=1024, help="evaluation window (stride: half)")
    p.add_argument("--variants", help="comma-separated labels to run (default: all)")
    p.add_argument("--skip-gpt2", action="store_true", help="leave out part 2 (GPT-2-124M shapes)")
    p.add_argument("--work", default="/tmp/tensoredge-headline")
    p.add_argument("--out", default=str(REPO / "docs"))
    p.add_argument("--reuse", action="store_true", help="keep the rows already measured in --work")
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started, load = time.time(), os.getloadavg()
    command = " ".join(["python benchmarks/headline.py", *(a for a in sys.argv[1:] if a != "--reuse")])

    from models import load_model
    from toolkit.data import wikitext2_ids
    from toolkit.evaluate import strided_windows

    machine = machine_info(args.threads)
    saved = work / "bandwidth.json"  # measured with the first rows; a --reuse run keeps it, as it keeps them
    bandwidth = json.loads(saved.read_text()) if args.reuse and saved.is_file() else read_bandwidth(args.threads)
    write_json(bandwidth, saved)
    say(f"load average {load[0]:.2f}; memory read bandwidth {bandwidth['gb_per_s']:.1f} GB/s")
    dense = load_model("smollm2-135m")
    windows = strided_windows(wikitext2_ids(dense.tokenizer, "test")[: args.ppl_tokens], args.context,
                              args.context // 2)
    wanted = set(args.variants.split(",")) if args.variants else None
    rows, reused = [], []
    for label, plan, budget in VARIANTS:
        if wanted and label not in wanted and label != "dense":
            continue
        done = work / f"row-{slug(label)}.json"
        if args.reuse and done.is_file():
            rows.append(json.loads(done.read_text()))
            reused.append(f"{label} ({datetime.fromtimestamp(done.stat().st_mtime, timezone.utc):%H:%M} UTC)")
            continue
        rows.append(measure_variant(label, plan, budget, dense, windows, args, work))
        write_json(rows[-1], done)
    finish_rows(rows, dense.model.config, bandwidth, args)

    gpt2_text, gpt2_json = "", None
    if not args.skip_gpt2:
        say("part 2: GPT-2-124M shapes (benchmarks/onnx_decode.py)")
        gpt2_out = work / "gpt2"
        cmd = [sys.executable, str(REPO / "benchmarks" / "onnx_decode.py"), "--ppl-tokens", "0", "--threads",
               str(args.threads), "--work", str(work / "gpt2-files"), "--out", str(gpt2_out),
               "--gguf-types", "f32,q8_0,q4_0"] + (["--reuse"] if args.reuse else [])
        subprocess.run(cmd, check=True, cwd=REPO)
        gpt2_text = (gpt2_out / "onnx_decode.txt").read_text()
        gpt2_json = json.loads((gpt2_out / "onnx_decode.json").read_text())

    name = f"{machine['cpu_model']}, {machine['cores_logical']} cores, {args.threads} threads"
    plot_files = plots(rows, name, out)
    headers = ["variant", "file", "size", "params", "perplexity", "KL", "decode tok/s", "TTFT", "peak RSS",
               "J/token (kind: meter)", "of roofline"]
    gpu, gpu_sources = gpu_rows()
    versions = machine.get("packages", {})
    lines = [
        "# Results: the headline comparison",
        "",
        f"Regenerate with `{command}`. Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
        + (f", by a run that took {(time.time() - started) / 60:.0f} min." if not reused else
           f". It was assembled with `--reuse` from rows measured on this machine by this command at the times "
           f"given: {', '.join(reused)}; the GPT-2 part likewise. The load average below is the assembling "
           "run's; the bandwidth is the one measured when the work folder's first rows were."),
        "",
        f"- **Machine:** {machine['cpu_model']}, {machine['cores_physical']} physical / {machine['cores_logical']} "
        f"logical cores, {mib(machine['memory_total_bytes'])} RAM, {machine['os']}; {args.threads} threads. "
        f"Load average {load[0]:.2f} at the start (other work on the machine makes timings noisy: compare rows "
        f"of this file, not with other machines).",
        f"- **Versions:** torch {__import__('torch').__version__}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
        f"- **Memory read bandwidth:** {bandwidth['best_gb_per_s']:.2f} GB/s, the best of the runs of "
        f"{bandwidth['method']} (median {bandwidth['gb_per_s']:.2f} GB/s); the roofline divides by the best. "
        f"A numpy sum is not the machine's peak: a runtime can read faster (a fraction over 100%).",
        f"- **Energy:** this host has no power sensors (no RAPL, no hwmon), so J/token is an **estimate** from "
        f"device_bench's CPU-utilisation model; the meter is named in each cell.",
        "",
        "## The default model: SmolLM2-135M-Instruct (real weights)",
        "",
        f"Perplexity and KL (against dense PyTorch) on {rows[0]['files']['PyTorch fp32']['scores']['tokens']:,} "
        f"scored tokens of the first {args.ppl_tokens:,} WikiText-2 "
        f"test tokens (window {args.context}, stride {args.context // 2}), each through its own runtime (ONNX "
        f"Runtime, llama.cpp). Speed: {args.prompt_tokens}-token prompt, {args.decode_tokens} greedy decode "
        f"steps, median of {args.repeats} after a warm-up, each file benched by device_bench in its own process. "
        f"TTFT is the prompt's prefill time. Compressed GGUF files are densified (llama.cpp multiplies dense "
        f"matrices), so they show quality, not size. Roofline: estimated bytes per token × tok/s ÷ bandwidth; "
        f"for the embedding rows in ONNX it is a lower bound, because ONNX Runtime rebuilds the shared head's "
        f"table from the TT cores at load time and reads that dense fp32 table at every step. A refused "
        f"export is one that failed its own check (the reason is cut to fit; results.json has it whole).",
        "",
        markdown_table(headers, table_rows(rows)),
        "",
        "Variants: " + "; ".join(f"**{label}** = " + ", ".join(
            [f"{k} `{v}`" for k, v in plan.items()] + ([f"FC `{b[0]}` remove {b[1]:.0%} ({b[2]})"] if b else []))
            for label, plan, b in VARIANTS if label != "dense") + ".",
        "",
        *[f"![{f}]({f})" for f in plot_files],
        "",
        "## Goals",
        "",
        *goals(rows, gpt2_json),
        "",
    ]
    if gpt2_text:
        lines += ["## GPT-2-124M shapes (random weights: speed only)", "",
                  "Measured in this run by `benchmarks/onnx_decode.py` (its own header follows).", "",
                  "```", gpt2_text.strip(), "```", ""]
    lines += ["## GPU reference rows (not measured in this run)", "",
              "PyTorch on a lent CUDA GPU, made by `benchmarks/run_gpu_reference.sh` (method: "
              "[gpu-reference.md](gpu-reference.md); the demo plan as 'compressed'): eager with the dynamic KV "
              "cache, and a static KV cache with CUDA graphs, at batch sizes up to 256. Energy from the GPU's own "
              "NVML counter (board only), whole board and above the GPU's idle power; J/token counts the prompt "
              "and decoded tokens of every stream, as the rows above do. The oldest rows (eager fp32, batch 1, no "
              "idle reading) are kept for the record: two such runs differed by 1.7x, because batch-1 eager "
              "decoding is bound by Python and kernel launches on the host CPU.", "",
              markdown_table(["run (UTC)", "variant", "device", "path", "batch", "weights", "TTFT",
                              "tok/s per stream", "tok/s total", "J/token", "J/token above idle"], gpu),
              "", "Sources: " + ", ".join(f"`{s}`" for s in gpu_sources) + ".", ""]
    summary = {"schema": "tensoredge.headline/1", "command": command, "machine": machine, "load_average": load,
               "bandwidth": bandwidth, "ppl_tokens": args.ppl_tokens, "rows": rows,
               "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(summary, out / "results.json")
    from toolkit.files import atomic_path

    with atomic_path(out / "RESULTS.md") as tmp:
        tmp.write_text("\n".join(lines))
    say(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and {', '.join(plot_files)}")


if __name__ == "__main__":
    main()
