"""The `tensoredge` command line: info, eval, compress, export, generate, bench, report, pipeline.

Heavy libraries are imported inside each command, so `tensoredge bench` stays torch-free.
"""

from __future__ import annotations

import argparse
import os
import sys

from device_bench.cli import add_bench_arguments
from device_bench.errors import BenchError
from device_bench.files import write_json
from device_bench.generate import add_generate_arguments
from device_bench.gguf_weights import TYPE_NAMES
from models import DEFAULT_MODEL, REGISTRY  # torch-free: loaders import torch when called
from toolkit.errors import TensoredgeError


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registered name ({', '.join(REGISTRY)}), Hugging Face "
                        "directory or hub id, .gguf file, or a compressed folder (default: %(default)s)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")


def add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", metavar="SPEC", help="embedding method, e.g. tt:ratio=4, tt:ratio=2,tiers=2,by=freq, "
                                                   "ttm:ratio=4 or svd-table:ratio=4; add head=shared|dense|lowrank")
    p.add_argument("--mlp", metavar="SPEC", help="MLP linears method, e.g. svd:ratio=1.5 or svd:rank=128")
    p.add_argument("--attention", metavar="SPEC", help="attention projections method, e.g. svd:ratio=1.5")


def add_eval_window(p: argparse.ArgumentParser, max_tokens: int | None) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens,
                   help="evaluate on the first N tokens of WikiText-2 test (default: %(default)s; all if unset)")
    p.add_argument("--context", type=int, help="window length in tokens (default: the model's, at most 1024)")
    p.add_argument("--stride", type=int, help="tokens between window starts (default: half the context)")


def add_sensitivity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensitivity-tokens", type=int, default=4096,
                   help="sensitivity allocation: held-out WikiText-2 valid tokens the KL is measured on "
                        "(default: %(default)s)")


def plan_of(args: argparse.Namespace) -> dict[str, str]:
    return {target: spec for target in ("embedding", "mlp", "attention") if (spec := getattr(args, target, None))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensoredge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="registered models, or one model's parameters by component")
    p.add_argument("--model", help="show parameters and bytes by component for this model")
    add_json(p)

    p = sub.add_parser("eval", help="perplexity on WikiText-2 test; KL and top-1 against a reference")
    add_model(p)
    p.add_argument("--reference", help="uncompressed model to compare with (default for a compressed "
                                       "folder: its base model)")
    p.add_argument("--no-reference", action="store_true", help="perplexity only")
    add_eval_window(p, max_tokens=None)
    add_json(p)

    p = sub.add_parser("compress", help="compress a model and save it (safetensors + manifest)")
    add_model(p)
    add_plan(p)
    p.add_argument("--fc", metavar="METHOD", help="budgeted MLP + attention compression with svd, asvd, svd-llm "
                                                 "or feature; give --remove or --max-ppl-increase")
    p.add_argument("--remove", type=float, help="fraction of the MLP + attention parameters (with --scope all: of "
                                                "all parameters) to remove, e.g. 0.2")
    p.add_argument("--max-ppl-increase", type=float,
                   help="instead of --remove: largest removal whose WikiText-2 valid perplexity rises at most "
                        "this much, e.g. 0.4 for +40%%")
    p.add_argument("--device", default="cpu", help="where the calibration pass runs, e.g. cuda (default: %(default)s)")
    p.add_argument("--alloc", choices=["surgical", "uniform", "sensitivity", "refined"], default="surgical",
                   help="per-layer ranks by each layer's output error, the same ratio everywhere, by the "
                        "measured rise in KL when each layer alone is truncated, or that refined by a second "
                        "pass measured in its context (default: %(default)s)")
    p.add_argument("--scope", choices=["fc", "all"], default="fc",
                   help="all: --remove counts every parameter, and the budget is split between the FC layers, "
                        "the embedding and the head by measured sensitivity (needs --alloc sensitivity)")
    add_sensitivity(p)
    p.add_argument("--out", required=True, help="output folder")
    add_json(p)

    p = sub.add_parser("sweep", help="compress with many plans and score each against the dense model; "
                                     "JSON, Markdown table and plot under docs/")
    p.add_argument("target", choices=["embedding", "fc"],
                   help="embedding: TT / TT-matrix / SVD variants and head policies vs ratio; "
                        "fc: MLP + attention methods, uniform vs surgical ranks, vs %% removed")
    add_model(p)
    p.add_argument("--out", default="docs", help="folder for <target>-sweep.json/.md/.png (default: %(default)s)")
    add_eval_window(p, max_tokens=1024)
    p.add_argument("--ratios", type=float, nargs="+", help="embedding: compression ratios (default: 2 3.31 5 10 20 38.4)")
    p.add_argument("--head-ratios", type=float, nargs="*", help="embedding: ratios at which the tied-head policies "
                                                                "are compared (default: 2)")
    p.add_argument("--calibration-tokens", type=int, default=8192,
                   help="fc: WikiText-2 valid tokens for calibration (default: %(default)s)")
    p.add_argument("--removals", default="0.1,0.2,0.3", help="fc: fractions of FC parameters to remove (default: %(default)s)")
    p.add_argument("--methods", default="svd-llm,feature,asvd,svd,tt-linear,trawl",
                   help="fc: methods to sweep (default: %(default)s)")
    p.add_argument("--allocs", default="surgical,uniform",
                   help="fc: allocations of the low-rank methods: surgical, uniform, sensitivity, refined "
                        "(default: %(default)s)")
    add_sensitivity(p)
    p.add_argument("--objective", choices=["relative", "absolute"], default="relative",
                   help="fc: surgical allocation minimises the sum of per-layer output errors relative to each "
                        "layer's output energy, or as is (default: %(default)s)")
    p.add_argument("--render-only", action="store_true", help="fc: redraw table and plot from an existing fc-sweep.json")
    add_json(p)

    p = sub.add_parser("export", help="export to ONNX (factors kept), GGUF (llama.cpp) or the factorized "
                                      "GGUF container; each verified before it is written")
    p.add_argument("format", choices=["onnx", "gguf", "container"])
    add_model(p)
    p.add_argument("--out", required=True, help="output: a directory for onnx (model.onnx, config, tokenizer), "
                                                "a .gguf file for gguf and container")
    p.add_argument("--type", default="f32", help=f"GGUF weight type: {', '.join(TYPE_NAMES)} (default: %(default)s)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8", "fp16"],
                   help="ONNX: also write dynamic-int8 and/or fp16 variants of the fp32 model, each checked "
                        "against PyTorch (default: fp32 only)")
    p.add_argument("--ort", action="store_true",
                   help="ONNX: also write ORT-format .ort files and required_operators.config (mobile builds)")
    add_json(p)

    p = sub.add_parser("materialize", help="turn a factorized container into a GGUF llama.cpp runs (torch-free)")
    p.add_argument("container", help="file written by `tensoredge export container`")
    p.add_argument("--out", required=True, help="dense GGUF to write")
    p.add_argument("--type", help="weight type of the output (default: the container's)")
    add_json(p)

    p = sub.add_parser("generate", help="stream text from an ONNX export without torch (greedy or sampled), "
                                        "or greedy with PyTorch for other models")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="ONNX export directory or .onnx/.ort file (torch-free), or any model `eval` takes")
    add_generate_arguments(p)
    add_json(p)

    p = sub.add_parser("heal", help="add TT-LoRA adapters and distil the model towards its teacher on "
                                    "WikiText-2 valid; perplexity before/after on test")
    add_model(p)
    p.add_argument("--teacher", help="model to distil towards (default for a compressed folder: its base)")
    p.add_argument("--targets", default="mlp", help="comma-separated: mlp, attention (default: %(default)s)")
    p.add_argument("--rank", type=int, default=4, help="TT bond rank of each adapter (default: %(default)s)")
    p.add_argument("--order", type=int, default=3, help="number of TT cores (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=1.0, help="scale of the update (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate: 5%% warm-up, then cosine to 10%% (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--time-limit", type=float, help="stop training after this many seconds, checkpointed "
                                                    "(evaluation still runs; a later run resumes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--merge", action="store_true", help="also fold the adapters into the factors (OUT/merged)")
    add_eval_window(p, max_tokens=4096)
    p.add_argument("--out", required=True, help="folder: adapter/, heal-state.pt (resumes), heal.json")
    add_json(p)

    p = sub.add_parser("adapter", help="export a TT-LoRA adapter as a llama.cpp LoRA GGUF, or merge it")
    p.add_argument("action", choices=["export", "merge"])
    add_model(p)
    p.add_argument("--adapter", required=True, help="adapter folder written by `tensoredge heal` (OUT/adapter)")
    p.add_argument("--out", required=True, help="LoRA .gguf to write (export) or model folder (merge)")
    p.add_argument("--rank", type=int, help="LoRA rank in the GGUF (default: the smallest within --tolerance)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="largest relative error of any update at the chosen rank (default: %(default)s)")
    p.add_argument("--base-gguf", help="the base model's GGUF to check the adapter on (default: write one)")
    add_json(p)

    p = sub.add_parser("bench", help="time an ONNX export (directory, .onnx, .ort) or a .gguf file (runs without torch)")
    add_bench_arguments(p)

    p = sub.add_parser("report", help="Markdown report with plots (size vs perplexity, tok/s and J/token vs "
                                      "size, Pareto fronts) from bench, eval and pipeline JSON files")
    p.add_argument("runs", nargs="+", help="JSON files written by bench, eval or pipeline")
    p.add_argument("--out", required=True, help="output folder")
    add_json(p)

    p = sub.add_parser("pipeline", help="load, compress, evaluate, export and bench; one summary table")
    add_model(p)
    add_plan(p)
    add_eval_window(p, max_tokens=8192)
    p.add_argument("--out", help="report folder (default: tensoredge-out/<model>)")
    p.add_argument("--gguf-type", default="f32", help="GGUF weight type (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, help="CPU threads for the benches (default: physical cores)")
    add_json(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # our progress lines, not library chatter
    from toolkit import commands

    try:
        result = getattr(commands, args.command)(args)
        if getattr(args, "json", None) and result is not None:
            write_json(result, args.json)
    except (TensoredgeError, BenchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
