"""The board runtime benchmark: our ONNX exports against llama.cpp and ONNX Runtime GenAI's own
builder, one run, interleaved rounds, same threads, prompt and decode length for every row.

    python benchmarks/runtime_bench.py                         # SmolLM2-135M, writes benchmarks/results/runtime/
    python benchmarks/runtime_bench.py --model gpt2-124m-random  # GPT-2-124M shapes (GenAI's builder has no GPT-2)
    python benchmarks/runtime_bench.py --variant healed out/heal/model  # add a compressed folder's rows
    python benchmarks/runtime_bench.py --onnx svd-llm-fc20-healed DIR --rows "ours svd-llm-fc20-healed int4" \
        "ours svd-llm-fc20 int4" "llama.cpp dense Q4_0" --out benchmarks/results/runtime-healed
                                   # an export made elsewhere (the GPU), timed against a few rows

Rows (SmolLM2): our exports fp32/int8/int4 of the dense model and of each variant (by default
svd-llm with 20% of the FC parameters removed, made here with `tensoredge compress`), llama.cpp
F32/Q8_0/Q5_1/Q4_1/Q4_0 of our GGUF (Q4_K_M and IQ4_NL by llama.cpp's own quantizer), and GenAI fp32/int8/int4 written by onnxruntime_genai's model builder
from the same weights, run by GenAI's generator. The builder needs transformers >= 5, so it runs
in its own virtual environment (.bench/genai-builder), made here on first use.

Each round runs every row once, in a fresh process (device_bench: one warm-up, one measured run),
in a shuffled order; the table gives the median over rounds with min-max. Bytes read per token:
every weight a decode step multiplies by (a table only gathered counts one row), plus the KV cache
at the mean decode context; the roofline fraction divides bytes/token x tok/s by the measured
read bandwidth. An ONNX Runtime profile of decode steps (ours int4 against GenAI's int4) is
written beside the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from device_bench.files import write_json  # noqa: E402
from device_bench.machine import machine_info  # noqa: E402
from toolkit.progress import say  # noqa: E402
from toolkit.table import text_table  # noqa: E402

DEFAULT_VARIANT = ("svd-llm-fc20", ["--fc", "svd-llm", "--remove", "0.2"])
GENAI_BUILDER = ["onnxruntime-genai==0.18.0", "transformers>=5", "onnx", "onnx-ir", "onnxruntime", "safetensors",
                 "tqdm", "numpy", "torch==2.13.0"]
PRECISIONS = ("fp32", "int8", "int4")
FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> dict:
    """Memory read bandwidth: `threads` numpy sums over disjoint parts of a large array (GB/s)."""
    data = np.ones(mib * 2**20 // 8)
    parts = np.array_split(data, threads)

    def read_all() -> float:
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]  # np.sum releases the GIL
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - t0

    read_all()
    seconds = [read_all() for _ in range(repeats)]
    return {"method": f"numpy sum of a {mib} MiB float64 array in {threads} threads, median of {repeats}",
            "gb_per_s": data.nbytes / float(np.median(seconds)) / 1e9}


def run(cmd: list[str], **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed: {' | '.join(tail)}")
    return done.stdout


def cli(*args: str) -> None:
    run([sys.executable, "-m", "toolkit.cli", *args])


def onnx_read_bytes(path: Path) -> tuple[int, int]:
    """(bytes a decode step reads, node count): every initializer, except that a table read only by
    Gather / GatherBlockQuantized counts one row."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in graph.initializer}
    rows = {t.name: int(t.dims[0]) if t.dims else 1 for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, set] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            source = name
            while source in producer and producer[source].op_type in ("Reshape", "Transpose", "Cast"):
                source = producer[source].input[0]
            gathered = node.op_type in ("Gather", "GatherBlockQuantized") and i == 0
            readers.setdefault(source, set()).add("gather" if gathered else "other")
    total = 0
    for name, size in sizes.items():
        if readers.get(name) == {"gather"}:
            total += size // max(1, rows[name])
        else:
            total += size
    return total, len(graph.node)


def gguf_read_bytes(path: Path) -> int:
    """Tensor bytes a decode step reads: all of them, but one row of token_embd when the file has
    its own output.weight (llama.cpp reads token_embd as the head when it has none)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors and "token_embd.weight" in tensors:
        total -= tensors["token_embd.weight"]
    return total


def kv_bytes_per_token(config, context: float, element_bytes: int) -> float:
    """Bytes of K and V one decode step reads at `context` positions (grouped-query heads counted)."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * layers * kv_heads * (hidden // heads) * context * element_bytes


def genai_builder_python(work: Path) -> Path:
    """A virtual environment with onnxruntime-genai's model builder (transformers >= 5), made once."""
    venv = REPO / ".bench" / "genai-builder"
    python = venv / "bin" / "python"
    if not (venv / ".ready").is_file():
        say(f"creating {venv} for onnxruntime_genai's model builder (transformers >= 5)")
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "--quiet", *GENAI_BUILDER])
        (venv / ".ready").write_text("ok\n")
    return python


def genai_builds(dense_hf: Path, work: Path) -> dict[str, Path]:
    """GenAI's own int4/int8/fp32 CPU builds of the dense model (its builder's defaults otherwise)."""
    python = genai_builder_python(work)
    out = {}
    for precision in PRECISIONS:
        folder = work / f"genai-{precision}"
        if not (folder / "genai_config.json").is_file():
            say(f"onnxruntime_genai builder: {precision}")
            run([str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(dense_hf), "-o", str(folder),
                 "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")])
        out[precision] = folder
    return out


def prepare(args: argparse.Namespace, work: Path) -> tuple[dict, object]:
    """Every file to bench: {label: (bench reference, kind, file, KV element bytes)}, and the config."""
    from transformers import AutoConfig

    from models import load_model
    from models.tokenizer_files import save_tokenizer

    dense_dir = work / "dense"
    variants = {"dense": args.model}
    for name, folder in args.variant:
        variants[name] = folder
    exports = {name: Path(folder) for name, folder in args.onnx}
    if args.default_variant and args.model == "smollm2-135m":
        name, options = DEFAULT_VARIANT
        folder = work / name
        if not (folder / "manifest.json").is_file():
            say(f"compressing {name}: tensoredge compress {' '.join(options)}")
            cli("compress", "--model", args.model, *options, "--out", str(folder))
        variants[name] = str(folder)
    rows = {}
    for name, model in variants.items():
        export = work / f"ours-{name}"
        if not (export / "export.json").is_file():
            say(f"tensoredge export onnx {name} ({', '.join(PRECISIONS)})")
            cli("export", "onnx", "--model", model, "--precision", *PRECISIONS, "--out", str(export))
        exports[name] = export
    for name, export in exports.items():
        for precision in PRECISIONS:
            if (export / FILES[precision]).is_file():
                rows[f"ours {name} {precision}"] = (str(export / FILES[precision]), "onnx", export / FILES[precision], 4)
    for weight_type in ("f32", "q8_0", "q5_1", "q4_k_m", "q4_1", "iq4_nl", "q4_0"):
        path = work / f"dense-{weight_type}.gguf"
        if not path.is_file():
            say(f"tensoredge export gguf {weight_type}")
            cli("export", "gguf", "--model", args.model, "--type", weight_type, "--out", str(path))
        rows[f"llama.cpp dense {weight_type.upper()}"] = (str(path), "gguf", path, 2)  # f16 KV cache
    if args.model == "smollm2-135m" and not args.no_genai:
        if not (dense_dir / "config.json").is_file():
            loaded = load_model(args.model)
            loaded.model.save_pretrained(dense_dir)
            save_tokenizer(loaded.tokenizer, dense_dir)
        for precision, folder in genai_builds(dense_dir, work).items():
            config = json.loads((folder / "genai_config.json").read_text())
            file = folder / config["model"]["decoder"]["filename"]
            rows[f"GenAI builder dense {precision}"] = (f"genai:{folder}", "onnx", file, 4)
    config = AutoConfig.from_pretrained(str(work / "ours-dense"))
    return rows, config


def bench_once(ref: str, out: Path, args: argparse.Namespace) -> dict:
    """One measured run of `ref` in a fresh process; with --reuse-rounds, the run already on disk."""
    if args.reuse_rounds and out.is_file():
        return json.loads(out.read_text())
    run([sys.executable, "-m", "device_bench", ref, "--json", str(out), "--threads", str(args.threads),
         "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens),
         "--repeats", "1", "--warmup", "1", "--meter", "estimate"])
    return json.loads(out.read_text())


def profile_decode(path: Path, threads: int, steps: int, out: Path) -> dict[str, float]:
    """Milliseconds per decode step by op type, from ONNX Runtime's profiler (prefill excluded)."""
    import onnxruntime as ort

    from device_bench.onnx_lm import InPlaceCache, OnnxCausalLM

    lm = OnnxCausalLM(path, threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(out / f"profile-{path.parent.name}")
    opts.log_severity_level = 3
    lm.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    lm.shared_buffer = True  # GenAI's graphs use GroupQueryAttention as ours do
    lm._ids = np.random.default_rng(0).integers(0, lm.vocab_size, 64)
    cache = InPlaceCache(lm, 64 + steps + 1)
    logits = cache.run(lm._ids, 0)
    for i in range(steps):
        logits = cache.run(np.array([int(np.argmax(logits))]), 64 + i)
    trace = json.loads(Path(lm.session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")[1:]  # not prefill
    per_op: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            if any(start <= event["ts"] <= end for start, end in runs):
                op = event["args"].get("op_name", "?")
                per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1000
    return {op: ms / len(runs) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "FOLDER"),
                   help="also bench this compressed folder's exports")
    p.add_argument("--no-default-variant", dest="default_variant", action="store_false",
                   help="skip the svd-llm 20%% FC variant made here")
    p.add_argument("--onnx", nargs=2, action="append", default=[], metavar=("NAME", "FOLDER"),
                   help="also bench the ONNX files of this export folder (e.g. one made on a GPU machine)")
    p.add_argument("--rows", nargs="+", metavar="LABEL", help="time only these rows (default: all)")
    p.add_argument("--no-genai", action="store_true", help="skip GenAI's builder rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", default="/tmp/tensoredge-runtime-bench", help="model files (kept for reuse)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "runtime"))
    p.add_argument("--prepare-only", action="store_true", help="make the model files, time nothing")
    p.add_argument("--reuse-rounds", action="store_true",
                   help="take each round's result already in --work (a run stopped after its rounds) instead of timing it")
    args = p.parse_args()
    work, out = Path(args.work) / args.model, Path(args.out) / args.model
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    rows, config = prepare(args, work)
    if args.rows:
        unknown = [label for label in args.rows if label not in rows]
        if unknown:
            raise SystemExit(f"error: no row {', '.join(map(repr, unknown))}; rows: {', '.join(rows)}")
        rows = {label: rows[label] for label in args.rows}
    if args.prepare_only:
        say(f"prepared {len(rows)} rows in {work}")
        return
    machine = machine_info(args.threads)
    load_before = os.getloadavg()
    bandwidth = read_bandwidth(args.threads)
    say(f"load average {load_before[0]:.2f}; read bandwidth {bandwidth['gb_per_s']:.1f} GB/s")
    context = args.prompt_tokens + args.decode_tokens / 2
    facts = {}
    for label, (_ref, kind, file, kv) in rows.items():
        weights, nodes = onnx_read_bytes(file) if kind == "onnx" else (gguf_read_bytes(file), None)
        facts[label] = {"file": str(file), "file_bytes": sum(f.stat().st_size for f in file.parent.glob(f"{file.name}*")),
                        "bytes_per_token": weights + kv_bytes_per_token(config, context, kv), "nodes": nodes}
    runs: dict[str, list[dict]] = {label: [] for label in rows}
    for r in range(args.rounds):
        order = list(rows)
        random.Random(r).shuffle(order)
        for label in order:
            say(f"round {r + 1}/{args.rounds}: {label}")
            runs[label].append(bench_once(rows[label][0], work / f"bench-{label.replace(' ', '_')}-{r}.json", args))
    load_after = os.getloadavg()

    results, table = {}, []
    for label, found in runs.items():
        tok_s = [x["decode_tokens_per_s"]["median"] for x in found]
        ttft = [x["prefill_s"]["median"] for x in found]
        rss = [x["peak_rss_sampled_bytes"] for x in found]
        median = float(np.median(tok_s))
        energy = [x["energy"] for x in found if x.get("energy")]
        entry = facts[label] | {
            "decode_tokens_per_s": {"median": median, "min": min(tok_s), "max": max(tok_s), "rounds": tok_s},
            "ttft_s": float(np.median(ttft)), "peak_rss_bytes": int(np.median(rss)),
            "roofline_fraction": facts[label]["bytes_per_token"] * median / (bandwidth["gb_per_s"] * 1e9),
            "runtime": found[0]["runtime"],
            "energy": {"joules_per_token": float(np.median([e["joules_per_token"] for e in energy])),
                       "kind": energy[0]["kind"], "source": energy[0]["source"]} if energy else None}
        results[label] = entry
        table.append([label, f"{entry['file_bytes'] / 1e6:.1f} MB", f"{median:.1f} ({min(tok_s):.1f}-{max(tok_s):.1f})",
                      f"{entry['ttft_s'] * 1e3:.0f} ms", f"{entry['peak_rss_bytes'] / 2**20:.0f} MiB",
                      f"{entry['bytes_per_token'] / 1e6:.1f} MB", f"{entry['roofline_fraction']:.0%}",
                      str(entry["nodes"] or "-")])
    table.sort(key=lambda row: -float(row[2].split()[0]))
    profiles = {}
    for label in ("ours dense int4", "GenAI builder dense int4"):
        if label in rows:
            say(f"profiling decode steps: {label}")
            profiles[label] = profile_decode(rows[label][2], args.threads, 32, work)
    header = (f"{args.model}, {args.threads} threads, {args.prompt_tokens}-token random prompt, {args.decode_tokens} "
              f"greedy decode steps; median (min-max) of {args.rounds} interleaved rounds, each row a fresh "
              f"process with one warm-up run\nmachine: {machine['cpu_model']}, {machine['cores_logical']} logical "
              f"cores; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
              f"memory read bandwidth {bandwidth['gb_per_s']:.2f} GB/s ({bandwidth['method']})")
    if args.reuse_rounds:  # the load averages above are of this run, not of the rounds it reused
        first = min(work.glob("bench-*-0.json"), key=lambda f: f.stat().st_mtime)
        header += (f"\nrounds reused from an earlier run (--reuse-rounds), measured from "
                   f"{datetime.fromtimestamp(first.stat().st_mtime, timezone.utc):%Y-%m-%d %H:%M} UTC")
    text = header + "\n\n" + text_table(["runtime / file", "file", "decode tok/s", "TTFT", "peak RSS",
                                         "bytes/token", "of roofline", "nodes"], table) + "\n"
    for label, ops in profiles.items():
        top = list(ops.items())[:8]
        text += f"\nONNX Runtime profile, {label}: ms per decode step by op (top 8 of {len(ops)}): " + \
            ", ".join(f"{op} {ms:.2f}" for op, ms in top) + f"; total {sum(ops.values()):.2f} ms\n"
    print(text)
    summary = {"schema": "tensoredge.runtime-bench/1", "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "machine": machine, "load_average": {"before": load_before, "after": load_after},
               "bandwidth": bandwidth, "settings": vars(args) | {"variant": args.variant}, "rows": results,
               "profiles": profiles}
    write_json(summary, str(out / "runtime_bench.json"))
    (out / "runtime_bench.txt").write_text(text)
    say(f"wrote {out}/runtime_bench.json and runtime_bench.txt")


if __name__ == "__main__":
    main()
