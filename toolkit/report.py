"""Reports: the pipeline's summary table, and a Markdown page from any set of result files."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.errors import TensoredgeError
from toolkit.table import markdown_table, mib, num

SUMMARY_HEADERS = ["model", "params", "ONNX file", "GGUF file", "perplexity", "KL", "top-1",
                   "ONNX tok/s*", "GGUF tok/s", "ONNX peak RSS", "GGUF peak RSS"]
BENCH_HEADERS = ["file", "runtime", "threads", "size", "load s", "prefill tok/s", "decode tok/s",
                 "p95 ms/token", "peak RSS", "KV cache"]


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """One row per variant (dense, compressed) of a pipeline summary."""
    rows = []
    for name, v in summary["variants"].items():
        onnx, gguf, scores = v["onnx"], v["gguf"], v["scores"]
        rows.append([
            name,
            f"{v['parameters']['total']['params'] / 1e6:.1f}M",
            mib(onnx["export"]["file_bytes"]),
            f"{mib(gguf['export']['file_bytes'])} {gguf['export']['weight_type']}",
            num(scores["perplexity"], 4),
            num(scores.get("kl"), 3),
            num(scores.get("top1_agreement"), 3),
            f"{onnx['bench']['decode_tokens_per_s']['median']:.1f}",
            f"{gguf['bench']['decode_tokens_per_s']['median']:.1f}",
            mib(onnx["bench"]["peak_rss_sampled_bytes"]),
            mib(gguf["bench"]["peak_rss_sampled_bytes"]),
        ])
    return SUMMARY_HEADERS, rows


def footnotes(summary: dict) -> list[str]:
    e, m = summary["evaluation"], summary["machine"]
    bench = summary["variants"]["dense"]["onnx"]["bench"]
    subset = "a subset" if e["tokens"] < e["split_tokens"] else "all"
    return [
        f"Perplexity, KL (dense || compressed, nats/token) and top-1 agreement: {subset} of WikiText-2 test, "
        f"{e['tokens']:,} of {e['split_tokens']:,} tokens, {e['windows']} windows of {e['context']} "
        f"tokens every {e['stride']}, PyTorch float32.",
        f"Benches: {bench['prompt_tokens']}-token random prompt, {bench['decode_tokens']} greedy decode steps, "
        f"median of {bench['repeats']} runs after {bench['warmup']} warm-up, {bench['threads']} threads.",
        "*ONNX decode has no KV cache yet: every step recomputes the whole prefix, so its tok/s is not "
        "comparable with llama.cpp's.",
        "GGUF files hold dense (materialised) weights: llama.cpp cannot run factorized layers.",
        f"Machine: {m.get('cpu_model')}, {m.get('cores_physical')} physical / {m.get('cores_logical')} logical "
        f"cores, {mib(m.get('memory_total_bytes'))}; {m.get('os')}.",
    ]


def summary_markdown(summary: dict) -> str:
    headers, rows = summary_rows(summary)
    args = summary["arguments"]
    command = f"tensoredge pipeline --model {args['model']}" + "".join(
        f" --{k} {v}" for k, v in summary["plan"].items())
    lines = [
        f"# tensoredge pipeline: {summary['model']}",
        "",
        f"Command: `{command} --max-tokens {args['max_tokens']}` ({summary['timestamp']}, "
        f"{summary['seconds']:.0f} s)",
        "",
        f"Weights: {summary['source']}. Plan: {summary['plan']}.",
        "",
        markdown_table(headers, rows),
        "",
        *[f"- {note}" for note in footnotes(summary)],
        "",
    ]
    return "\n".join(lines)


def bench_row(result: dict) -> list[str]:
    return [
        Path(result["model_path"]).name,
        f"{result['runtime']['name']} {result['runtime']['version']}",
        str(result["threads"]),
        mib(result["model_bytes"]),
        f"{result['load_s']:.2f}",
        f"{result['prefill_tokens_per_s']['median']:.1f}",
        f"{result['decode_tokens_per_s']['median']:.1f}",
        f"{result['decode_latency_ms']['p95']:.1f}",
        mib(result["peak_rss_sampled_bytes"]),
        "yes" if result["kv_cache"] else "no",
    ]


def write_report(paths: list[Path], out_dir: Path) -> Path:
    """report.md in `out_dir` from bench (tensoredge.bench/1) and pipeline summary JSON files."""
    from device_bench.bench import SCHEMA as BENCH_SCHEMA

    sections, bench_rows = [], []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TensoredgeError(f"cannot read results file {path}: {exc}") from None
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema == BENCH_SCHEMA:
            bench_rows.append(bench_row(data))
        elif schema == "tensoredge.pipeline/1":
            sections.append(summary_markdown(data))
        else:
            raise TensoredgeError(f"{path} is not a bench or pipeline result (schema {schema!r})")
    if bench_rows:
        sections.append("# Benchmarks\n\n" + markdown_table(BENCH_HEADERS, bench_rows) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    report.write_text("\n".join(sections))
    return report
