"""Decode speed of ONNX exports vs Optimum's export and llama.cpp, side by side, on GPT-2-124M shapes.

    python benchmarks/onnx_decode.py                # table + JSON into benchmarks/results/onnx/
    python benchmarks/onnx_decode.py --ppl-tokens 0 # speed only

Rows: Optimum-exported ONNX fp32 (the dense baseline ORTModelForCausalLM would run), our export
dense fp32 / int8, our export compressed (PLAN) fp32 / int8, llama.cpp F32 / Q8_0. Every row is
timed by device_bench in its own process (same threads, 128-token random prompt, 128 greedy
decode steps, median of --repeats runs after a warm-up). Weights are random (gpt2-124m-random):
speed depends on shapes, not values. Quality of the same plan is measured separately on the
default model (smollm2-135m), through ONNX Runtime itself, with the eval windowing.

Bytes read per token is an estimate: every weight the decode step multiplies by (graph weight
bytes, or the GGUF file size) plus the KV cache read once at the mean decode context. The
roofline fraction divides bytes/token x tok/s by a measured memory read bandwidth.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
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

PLAN = {"mlp": "svd:ratio=2", "attention": "svd:ratio=2"}


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> dict:
    """Memory read bandwidth: `threads` numpy sums over disjoint halves of a large array (GB/s)."""
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
            "gb_per_s": data.nbytes / float(np.median(seconds)) / 1e9,
            "best_gb_per_s": data.nbytes / min(seconds) / 1e9}


def onnx_weight_bytes(path: Path) -> int:
    import onnx

    from exporters.onnx_graph import graph_weight_bytes

    return graph_weight_bytes(onnx.load(str(path)))


def kv_bytes_per_token(config, context: float, element_bytes: int) -> float:
    """Bytes of K and V one decode step reads at `context` positions (grouped-query heads counted)."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * layers * kv_heads * (hidden // heads) * context * element_bytes


def optimum_export(loaded, out: Path) -> Path:
    """Dense model saved locally, exported by Optimum (text-generation-with-past), no hub access."""
    from optimum.exporters.onnx import main_export

    hf_dir = out / "hf"
    loaded.model.save_pretrained(hf_dir)
    loaded.tokenizer.save_pretrained(hf_dir)
    main_export(str(hf_dir), output=str(out / "optimum"), task="text-generation-with-past", device="cpu",
                do_validation=False)
    return out / "optimum" / "model.onnx"


def bench(path: Path, out: Path, args: argparse.Namespace) -> dict:
    import subprocess

    cmd = [sys.executable, "-m", "device_bench", str(path), "--json", str(out), "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens),
           "--repeats", str(args.repeats), "--warmup", "1", "--meter", "estimate"]
    say(f"bench {path}")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench of {path} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())


def perplexities(plan: dict, tokens: int, work: Path) -> dict:
    """smollm2-135m dense (PyTorch) vs ONNX Runtime dense int8, compressed fp32 and int8, on WikiText-2 test."""
    from exporters.onnx import export_onnx
    from models import load_model
    from toolkit.compress import compress_
    from toolkit.data import wikitext2_ids
    from toolkit.evaluate import OnnxModel, compare, strided_windows

    dense = load_model("smollm2-135m")
    compressed = copy.copy(dense)
    compressed.model = copy.deepcopy(dense.model)
    compress_(compressed.model, compressed.family, plan, tokenizer=compressed.tokenizer, progress=say)
    from toolkit.errors import TensoredgeError

    candidates, refused = {}, {}
    for name, loaded in (("dense", dense), ("compressed", compressed)):
        say(f"smollm2-135m {name}: ONNX export (fp32 + int8)")
        try:
            export_onnx(loaded, work / f"smollm2-{name}", precisions=("int8",), progress=say)
        except TensoredgeError as e:  # a gate refused it: report that instead of a perplexity
            refused[name] = str(e)
            say(f"smollm2-135m {name}: export refused: {e}")
            continue
        for precision, file in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
            if (name, precision) != ("dense", "fp32"):
                candidates[f"{name} {precision} (ORT)"] = OnnxModel(str(work / f"smollm2-{name}" / file)).model
    context = 1024
    windows = strided_windows(wikitext2_ids(dense.tokenizer, "test")[:tokens], context, context // 2)
    say(f"perplexity on {tokens} WikiText-2 test tokens, {len(windows)} windows")
    scores = compare(dense.model, candidates, windows, progress=say)
    scores["dense fp32 (PyTorch)"] = scores.pop("reference")
    return {"model": "smollm2-135m", "plan": plan, "tokens": tokens, "context": context, "stride": context // 2,
            "scores": scores, "refused": refused}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--plan", default=json.dumps(PLAN), help="compression plan, JSON (default: %(default)s)")
    p.add_argument("--ppl-tokens", type=int, default=2048, help="WikiText-2 test tokens for the perplexity "
                                                                "check on smollm2-135m (0: skip)")
    p.add_argument("--gguf-types", default="f32,q8_0", help="llama.cpp rows (default: %(default)s)")
    p.add_argument("--work", default="/tmp/tensoredge-onnx-decode", help="scratch folder for the model files")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "onnx"))
    p.add_argument("--reuse", action="store_true", help="resume an interrupted run: keep the model files and "
                                                         "bench results already in --work, make/bench the rest")
    args = p.parse_args()
    plan = json.loads(args.plan)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    from exporters.gguf import export_gguf
    from exporters.onnx import export_onnx
    from models import load_model
    from toolkit.compress import compress_

    machine = machine_info(args.threads)
    load = os.getloadavg()
    say(f"load average before: {load[0]:.2f} (shared machine: other jobs may run)")
    bandwidth = read_bandwidth(args.threads)
    say(f"memory read bandwidth {bandwidth['gb_per_s']:.1f} GB/s ({bandwidth['method']})")

    files = {"optimum ORT fp32": (work / "optimum" / "model.onnx", "onnx", 4)}
    for name in ("dense", "compressed"):
        files[f"ours {name} ORT fp32"] = (work / f"ours-{name}" / "model.onnx", "onnx", 4)
        files[f"ours {name} ORT int8"] = (work / f"ours-{name}" / "model_int8.onnx", "onnx", 4)
    gguf_types = args.gguf_types.split(",")
    for weight_type in gguf_types:
        files[f"llama.cpp {weight_type.upper()}"] = (work / f"dense-{weight_type}.gguf", "gguf", 2)  # f16 KV cache
    if not (args.reuse and all(path.is_file() for path, _, _ in files.values())):
        dense = load_model("gpt2-124m-random")
        compressed = copy.copy(dense)
        compressed.model = copy.deepcopy(dense.model)
        compress_(compressed.model, compressed.family, plan, progress=say)
        say("Optimum export (dense fp32)")
        optimum_export(dense, work)
        for name, loaded in (("dense", dense), ("compressed", compressed)):
            say(f"tensoredge export {name} (fp32 + int8)")
            result = export_onnx(loaded, work / f"ours-{name}", precisions=("int8",), progress=say)
            (work / f"export-{name}.json").write_text(json.dumps(result, indent=1))
        for weight_type in gguf_types:
            say(f"GGUF {weight_type}")
            export_gguf(dense, work / f"dense-{weight_type}.gguf", weight_type=weight_type, progress=say)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(REPO / "models" / "assets" / "gpt2"))  # GPT-2-124M's shapes

    context = args.prompt_tokens + args.decode_tokens / 2
    rows, results = [], {}
    for label, (path, kind, kv_element) in files.items():
        done = work / f"bench-{label.replace(' ', '_')}.json"
        r = json.loads(done.read_text()) if args.reuse and done.is_file() else bench(path, done, args)
        weights = onnx_weight_bytes(path) if kind == "onnx" else path.stat().st_size
        per_token = weights + kv_bytes_per_token(config, context, kv_element)
        tok_s = r["decode_tokens_per_s"]["median"]
        results[label] = {"file": str(path), "file_bytes": path.stat().st_size, "weight_bytes": weights,
                          "bytes_per_token_estimate": per_token,
                          "roofline_fraction": per_token * tok_s / (bandwidth["gb_per_s"] * 1e9), "bench": r}
        rows.append([label, f"{path.stat().st_size / 2**20:.1f} MiB", f"{tok_s:.1f}",
                     f"{r['prefill_s']['median'] * 1e3:.0f} ms", f"{r['peak_rss_sampled_bytes'] / 2**20:.0f} MiB",
                     f"{per_token / 1e6:.1f} MB", f"{results[label]['roofline_fraction']:.0%}"])

    quality = perplexities(plan, args.ppl_tokens, work) if args.ppl_tokens else None
    header = (f"GPT-2-124M shapes (random weights), {args.threads} threads, {args.prompt_tokens}-token prompt, "
              f"{args.decode_tokens} greedy decode steps, median of {args.repeats} runs; compressed plan {plan}\n"
              f"machine: {machine['cpu_model']}, {machine['cores_logical']} logical cores; "
              f"load average {load[0]:.2f} before the run (shared machine)\n"
              f"memory read bandwidth: {bandwidth['gb_per_s']:.2f} GB/s ({bandwidth['method']})")
    # peak RSS: psutil-sampled. The OS figure (ru_maxrss) of a child forked from this process starts
    # at this process's own peak, which holds the PyTorch models.
    table = text_table(["runtime / file", "size", "decode tok/s", "TTFT", "peak RSS (sampled)", "bytes/token (est.)",
                        "of roofline"], rows)
    text = f"{header}\n\n{table}\n"
    if quality:
        qrows = [[name, f"{s['perplexity']:.3f}", f"{s.get('kl', float('nan')):.4f}",
                  f"{s.get('top1_agreement', float('nan')):.3f}"] for name, s in quality["scores"].items()]
        base = quality["scores"]["dense fp32 (PyTorch)"]["perplexity"]
        text += (f"\nsmollm2-135m, WikiText-2 test first {quality['tokens']} tokens (ctx {quality['context']}, "
                 f"stride {quality['stride']}), dense perplexity {base:.3f}; same plan, through ONNX Runtime:\n"
                 + text_table(["model", "perplexity", "KL vs dense", "top-1 agree"], qrows) + "\n"
                 + "".join(f"{name}: export refused: {why}\n" for name, why in quality["refused"].items()))
    print(text)
    summary = {"schema": "tensoredge.onnx-decode/1", "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "machine": machine, "load_average_before": load,
               "bandwidth": bandwidth, "plan": plan, "rows": results, "quality": quality}
    write_json(summary, out / "onnx_decode.json")
    (out / "onnx_decode.txt").write_text(text)
    say(f"wrote {out}/onnx_decode.json and onnx_decode.txt")


if __name__ == "__main__":
    main()
