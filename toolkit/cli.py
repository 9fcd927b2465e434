"""The `tensoredge` command line: info, eval, compress, export, generate, bench, report, pipeline.

Heavy libraries are imported inside each command, so `tensoredge bench` stays torch-free.
"""

from __future__ import annotations

import argparse
import os
import sys

from device_bench.cli import add_bench_arguments
from device_bench.errors import BenchError, first_line
from device_bench.files import write_json
from device_bench.generate import add_generate_arguments
from device_bench.gguf_weights import TYPE_NAMES
from device_bench.interrupt import run_command
from models import DEFAULT_MODEL, REGISTRY  # torch-free: loaders import torch when called
from toolkit.data import EVAL_TEXTS
from toolkit.errors import TensoredgeError

ZERO_POINTS_HELP = ("a zero point per block beside its scale (MatMulNBits' asymmetric form: 4 more bits "
                    "per block at int4, weights closer to the float ones)")


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registered name ({', '.join(REGISTRY)}), Hugging Face "
                        "directory or hub id, .gguf file, or a compressed folder (default: %(default)s)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace tensoredge's own output of another kind at --out "
                                                        "(never anything tensoredge did not write)")


def add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", metavar="SPEC", help="embedding method, e.g. tt:ratio=4, tt:ratio=2,tiers=2,by=freq, "
                                                   "ttm:ratio=4 or svd-table:ratio=4; add head=shared|dense|lowrank")
    p.add_argument("--mlp", metavar="SPEC", help="MLP linears method, e.g. svd:ratio=1.5 or svd:rank=128")
    p.add_argument("--attention", metavar="SPEC", help="attention projections method, e.g. svd:ratio=1.5")


def add_eval_window(p: argparse.ArgumentParser, max_tokens: int | None, default_help: str | None = None) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens,
                   help="evaluate on the first N tokens of WikiText-2 test (default: "
                        + (default_help or "%(default)s; all if unset") + ")")
    p.add_argument("--context", type=int, help="window length in tokens (default: the model's, at most 1024)")
    p.add_argument("--stride", type=int, help="tokens between window starts (default: half the context)")


def add_sensitivity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensitivity-tokens", type=int, default=4096,
                   help="sensitivity allocation: held-out WikiText-2 valid tokens the KL is measured on "
                        "(default: %(default)s)")


def add_budget(p: argparse.ArgumentParser) -> None:
    """--fc METHOD with --remove or --max-ppl-increase, and how the budget is spent."""
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
    p.add_argument("--calibration", default="valid",
                   help="text the calibrated methods (asvd, svd-llm, feature, sensitivity) read: valid "
                        "(WikiText-2 valid), books (public-domain books), moby (Moby-Dick) or several, e.g. valid,books, in equal "
                        "shares "
                        "(default: %(default)s)")
    p.add_argument("--sensitivity-profile", metavar="FILE",
                   help="sensitivity allocation: read the measured profile from FILE if it exists (refused if it "
                        "was measured on other weights or settings), else measure it and write it there")
    add_sensitivity(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensoredge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="registered models, or one model's parameters by component")
    p.add_argument("--model", help="show parameters and bytes by component for this model")
    add_json(p)

    p = sub.add_parser("eval", help="perplexity on a held-out text (WikiText-2 test by default); KL and top-1 "
                                    "against a reference")
    add_model(p)
    p.add_argument("--reference", help="uncompressed model to compare with (default for a compressed "
                                       "folder: its base model)")
    p.add_argument("--no-reference", action="store_true", help="perplexity only")
    p.add_argument("--text", default="wikitext2", choices=EVAL_TEXTS,
                   help="held-out text: wikitext2 (WikiText-2 test) or alice (a public-domain book) (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="PyTorch models: cpu or cuda (default: %(default)s)")
    p.add_argument("--batch", type=int, help="windows per forward pass (default: 16 on cuda, 1 on cpu)")
    p.add_argument("--fake-quant", choices=["int4", "int8"],
                   help="PyTorch models: compute with the weights quantized as ONNX Runtime's MatMulNBits would "
                        "(blocks of --quant-block), e.g. to compare post-training quantization with `heal --quant`")
    p.add_argument("--quant-block", type=int, default=32, help="with --fake-quant: block size (default: %(default)s)")
    p.add_argument("--quant-zero-points", action="store_true", help="with --fake-quant: " + ZERO_POINTS_HELP)
    add_eval_window(p, max_tokens=None)
    add_json(p)

    p = sub.add_parser("compress", help="compress a model and save it (safetensors + manifest)")
    add_model(p)
    add_plan(p)
    add_budget(p)
    p.add_argument("--out", required=True, help="output folder")
    add_force(p)
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
    p.add_argument("--variants", help="embedding: only these variants, comma-separated (tt, tt tiers by freq, "
                                      "tt tiers by norm, ttm, svd-table, svd tiers by freq; default: all)")
    p.add_argument("--calibration-tokens", type=int, default=8192,
                   help="fc: WikiText-2 valid tokens for calibration (default: %(default)s)")
    p.add_argument("--removals", default="0.1,0.2,0.3", help="fc: fractions of FC parameters to remove (default: %(default)s)")
    p.add_argument("--methods", default="svd-llm,feature,asvd,svd,tt-linear,trawl",
                   help="fc: methods to sweep (default: %(default)s)")
    p.add_argument("--allocs", default="surgical,uniform",
                   help="fc: allocations of the low-rank methods: surgical, uniform, sensitivity, refined "
                        "(default: %(default)s)")
    p.add_argument("--sensitivity-profile", metavar="FILE",
                   help="sensitivity allocation: read the measured profile from FILE if it exists (refused if it "
                        "was measured on other weights or settings), else measure it and write it there")
    add_sensitivity(p)
    p.add_argument("--objective", choices=["relative", "absolute"], default="relative",
                   help="fc: surgical allocation minimises the sum of per-layer output errors relative to each "
                        "layer's output energy, or as is (default: %(default)s)")
    p.add_argument("--render-only", action="store_true", help="redraw the table and plot from the sweep's JSON in --out (fc-sweep.json, embedding-sweep.json)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run each point as a Ray task: 'local' (the default when no address is given) starts Ray "
                        "on this machine, an address (e.g. 10.0.0.1:6379) joins that cluster (needs "
                        "pip install 'tensoredge[ray]')")
    p.add_argument("--task-cpus", type=int, default=1,
                   help="with --ray: CPUs (torch threads) per point (default: %(default)s)")
    p.add_argument("--task-gpus", type=float, default=1.0,
                   help="with --ray and --device cuda: GPUs per point; a fraction such as 0.25 runs four "
                        "small-model points on each GPU at once (default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="where points are scored (and healed), e.g. cuda: --task-gpus GPUs per Ray task (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the points a previous run recorded as failed (finished points are skipped)")
    p.add_argument("--hopeless", type=float, default=1000.0, metavar="PPL",
                   help="fc: larger removals of a method/allocation whose perplexity passed PPL are recorded as "
                        "skipped, not run (inf: run every point; default: %(default)s)")
    p.add_argument("--heal", type=int, metavar="STEPS",
                   help="heal each compressed model for STEPS distillation steps before scoring it "
                        "(all parameters, towards the dense model, on WikiText-2 valid or --heal-data); scored "
                        "before and after")
    p.add_argument("--heal-lr", type=float, default=1e-4, help="--heal: learning rate (default: %(default)s)")
    p.add_argument("--heal-batch", type=int, default=4, help="--heal: sequences per step (default: %(default)s)")
    p.add_argument("--heal-seq-len", type=int, default=256, help="--heal: tokens per sequence (default: %(default)s)")
    p.add_argument("--heal-tokens", type=int, default=65536,
                   help="--heal: distil on the first N WikiText-2 valid tokens (more than it holds: all of it; "
                        "default: %(default)s)")
    p.add_argument("--heal-data", metavar="SPEC",
                   help="--heal: distil on these sources instead, as `heal --data` takes them, e.g. "
                        "valid:0.3,books:0.3,generated=out/samples:0.4 (--heal-tokens then does not apply)")
    add_json(p)

    p = sub.add_parser("export", help="export to ONNX (factors kept), GGUF (llama.cpp) or the factorized "
                                      "GGUF container; each verified before it is written")
    p.add_argument("format", choices=["onnx", "gguf", "container"])
    add_model(p)
    p.add_argument("--out", required=True, help="output: a directory for onnx (model.onnx, config, tokenizer), "
                                                "a .gguf file for gguf and container")
    add_force(p)
    p.add_argument("--type", default="f32", help=f"GGUF weight type: {', '.join(TYPE_NAMES)}, or with llama.cpp's own "
                   "quantizer q6_k, q5_k_m, q4_k_m, q4_k_s, q3_k_m, iq4_nl (export gguf only; default: %(default)s)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8", "int4"],
                   help="ONNX: one model file per precision, each checked against PyTorch; int8/int4 are "
                        "block-quantized weights (MatMulNBits); genai_config.json points at the first (default: fp32)")
    p.add_argument("--block-size", type=int, default=32, help="ONNX int8/int4: weights per quantization block "
                                                             "(power of two >= 16, default: %(default)s)")
    p.add_argument("--zero-points", action="store_true", help="ONNX int8/int4: " + ZERO_POINTS_HELP)
    p.add_argument("--accuracy-level", type=int, default=4, choices=range(5), metavar="{0..4}",
                   help="ONNX int8/int4: MatMulNBits compute; 4 quantizes activations to int8 per block (fast), "
                        "0 computes in fp32 (default: %(default)s)")
    p.add_argument("--ort", action="store_true",
                   help="ONNX: also write ORT-format .ort files and required_operators.config (mobile builds)")
    add_json(p)

    p = sub.add_parser("materialize", help="turn a factorized container into a GGUF llama.cpp runs (torch-free)")
    p.add_argument("container", help="file written by `tensoredge export container`")
    p.add_argument("--out", required=True, help="dense GGUF to write")
    add_force(p)
    p.add_argument("--type", help="weight type of the output (default: the container's)")
    add_json(p)

    p = sub.add_parser("generate", help="stream text from an ONNX export without torch (greedy or sampled), "
                                        "or greedy with PyTorch for other models")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="ONNX export directory or .onnx/.ort file (torch-free), or any model `eval` takes")
    add_generate_arguments(p)
    add_json(p)

    p = sub.add_parser("heal", help="distil a (compressed) model towards its teacher (all parameters, or TT-LoRA "
                                    "adapters); perplexity before/after on the held-out texts")
    add_model(p)
    p.add_argument("--teacher", help="model to distil towards (default for a compressed folder: its base)")
    p.add_argument("--train", choices=["all", "adapters"], default="all",
                   help="all: every parameter of the model (saved as OUT/model); adapters: TT-LoRA adapters only "
                        "(OUT/adapter) (default: %(default)s)")
    p.add_argument("--data", default="valid", metavar="SPEC",
                   help="distillation text: sources with weights, e.g. valid:0.5,generated=DIR:0.5,books:0.2 "
                        "(valid: WikiText-2 valid; books: public-domain books; moby: Moby-Dick; generated=DIR: `heal-data generate` "
                        "output) (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, help="peak learning rate: 5%% warm-up, then cosine to 10%% "
                                            "(default: 3e-4 for all, 2e-3 for adapters)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--clip", type=float, help="clip the gradient norm to this (0: off; default: 1 for all, 0 for adapters)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches (default: %(default)s)")
    p.add_argument("--quant", choices=["int4", "int8"],
                   help="train for this weight quantization (fake-quant as ONNX Runtime's MatMulNBits, straight-through)")
    p.add_argument("--quant-block", type=int, default=32, help="quantization block size (default: %(default)s)")
    p.add_argument("--quant-zero-points", action="store_true", help="with --quant: " + ZERO_POINTS_HELP)
    p.add_argument("--kl-chunk", type=int, default=2048, help="positions per chunk of the KL (memory) (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: 200 for all, 25 for adapters)")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations for the curves in heal.json "
                                                  "(0: none; default: a tenth of --steps)")
    p.add_argument("--curve-tokens", type=int, default=4096,
                   help="tokens of each held-out text evaluated for the curves (default: %(default)s)")
    p.add_argument("--time-limit", type=float, help="stop training after this many seconds, checkpointed "
                                                    "(evaluation still runs; a later run resumes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--targets", default="mlp", help="adapters: comma-separated mlp, attention (default: %(default)s)")
    p.add_argument("--rank", type=int, default=4, help="adapters: TT bond rank (default: %(default)s)")
    p.add_argument("--order", type=int, default=3, help="adapters: number of TT cores (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=1.0, help="adapters: scale of the update (default: %(default)s)")
    p.add_argument("--merge", action="store_true", help="adapters: also fold them into the factors (OUT/merged)")
    add_eval_window(p, max_tokens=None, default_help="all of each held-out text on cuda, 4096 on cpu")
    p.add_argument("--out", required=True, help="folder: model/ or adapter/, heal.json, heal-state.safetensors (resumes)")
    add_force(p)
    add_json(p)

    p = sub.add_parser("heal-data", help="distillation text for `heal`: the teacher's own samples, cached as token ids")
    p.add_argument("action", choices=["generate"])
    p.add_argument("--teacher", default=DEFAULT_MODEL, help="model that writes the samples (default: %(default)s)")
    p.add_argument("--tokens", type=int, required=True, help="tokens to generate in all, prompts included")
    p.add_argument("--length", type=int, default=480, help="sampled tokens per sample (default: %(default)s)")
    p.add_argument("--prompt-length", type=int, default=32,
                   help="prompt tokens each sample starts from (default: %(default)s)")
    p.add_argument("--prompts", default="valid",
                   help="texts the prompts are drawn from: valid (WikiText-2 valid), books (public-domain books), "
                        "moby (Moby-Dick), or several, e.g. valid,books (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="samples generated together (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the same seed and settings give the same samples "
                                                       "(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for samples.safetensors + samples.json")
    add_force(p)
    add_json(p)

    p = sub.add_parser("adapter", help="export a TT-LoRA adapter as a llama.cpp LoRA GGUF, or merge it")
    p.add_argument("action", choices=["export", "merge"])
    add_model(p)
    p.add_argument("--adapter", required=True, help="adapter folder written by `tensoredge heal` (OUT/adapter)")
    p.add_argument("--out", required=True, help="LoRA .gguf to write (export) or model folder (merge)")
    add_force(p)
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
    add_force(p)
    add_json(p)

    p = sub.add_parser("pipeline", help="load, compress, evaluate, export and bench; one summary table. Without a "
                                        "plan: the model's demo plan (smollm2-135m: the largest svd-llm removal "
                                        "within +10%% valid perplexity)")
    add_model(p)
    add_plan(p)
    add_budget(p)
    add_eval_window(p, max_tokens=8192)
    p.add_argument("--out", help="report folder (default: tensoredge-out/<model>)")
    add_force(p)
    p.add_argument("--gguf-type", default="q8_0", help="GGUF weight type (default: %(default)s)")
    p.add_argument("--onnx-precision", default="int8", choices=["fp32", "fp16", "int8", "int4"],
                   help="ONNX weight precision (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, help="CPU threads for the benches (default: physical cores)")
    add_json(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # our progress lines, not library chatter
    return run_command(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    from toolkit import commands, preflight

    try:
        preflight.check(args)  # every cheap check before any model is loaded
        result = getattr(commands, args.command.replace("-", "_"))(args)
        if getattr(args, "json", None) and result is not None:
            write_json(result, args.json)
    except (TensoredgeError, BenchError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
