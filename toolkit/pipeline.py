"""`tensoredge pipeline`: load -> compress -> evaluate -> export -> bench -> one summary table."""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from device_bench.files import atomic_path, check_output, claim_folder, write_json
from toolkit.progress import say

VARIANTS = ("dense", "compressed")


def bench_in_subprocess(path: Path, out: Path, prompt_tokens: int = 64, decode_tokens: int = 32,
                        threads: int | None = None) -> dict:
    """Run device_bench in its own process, so its peak RSS is the runtime's alone."""
    import json

    from toolkit.errors import TensoredgeError

    command = [sys.executable, "-m", "device_bench", str(path), "--json", str(out),
               "--prompt-tokens", str(prompt_tokens), "--decode-tokens", str(decode_tokens)]
    if threads:
        command += ["--threads", str(threads)]
    say(f"bench {path.name}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TensoredgeError(f"bench of {path.name} failed (exit {done.returncode}): {last}")
    return json.loads(out.read_text())


def run_pipeline(args: argparse.Namespace) -> dict:
    from exporters.gguf import export_gguf
    from exporters.onnx import export_onnx
    from models import DEFAULT_MODEL, REGISTRY
    from toolkit.checkpoint import open_model, save_compressed
    from toolkit.preflight import plan_of
    from toolkit.commands import (check_device, check_plan_budget, check_profile_option, evaluation_windows, fc_budget,
                                   run_fc_budget, set_budget, shipped_profile)
    from toolkit.compress.context import check_calibration
    from toolkit.compress import compress_
    from toolkit.counting import count_parameters
    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import compare
    from toolkit.report import front_verdict, summary_markdown, summary_rows
    from toolkit.sweep import command_line
    from toolkit.table import text_table

    started = time.time()
    out = Path(args.out or Path("tensoredge-out") / Path(args.model).name)
    check_output(out, "pipeline", inputs=[args.model], force=getattr(args, "force", False))
    plan = plan_of(args)
    if not plan and args.fc is None:  # the model's demo plan, which may be a budget ("fc": "svd-llm:...")
        plan = dict(REGISTRY.get(args.model, REGISTRY[DEFAULT_MODEL]).demo_plan)
        set_budget(args, plan.pop("fc", None))
    budget = fc_budget(args)
    check_plan_budget(plan, budget, args.scope)
    check_device(args.device)
    calibration = check_calibration(args.calibration)
    check_profile_option(args)
    args.shipped_profile = shipped_profile(args)

    say(f"loading {args.model}")
    dense = open_model(args.model)
    compressed = copy.copy(dense)
    compressed.model = copy.deepcopy(dense.model)
    say(f"compressing with {plan | ({'fc': budget} if budget else {})}")
    t0 = time.time()
    if plan:
        compress_(compressed.model, compressed.family, plan, tokenizer=compressed.tokenizer, calibration=calibration)
    allocation = None
    if budget:
        allocation = run_fc_budget(compressed, args, calibration)
        plan = plan | {"fc": budget} | allocation.get("plan", {})
        say(f"fc: {allocation['removed_of_fc']:.1%} of the MLP + attention parameters removed")
    compress_s = time.time() - t0
    claim_folder(out, "pipeline")
    save_compressed(compressed, plan, out / "compressed")

    windows, setup = evaluation_windows(dense, args)
    say(f"evaluating on {setup['tokens']} WikiText-2 test tokens ({len(windows)} windows)")
    scores = compare(dense.model, {"compressed": compressed.model}, windows, progress=say)
    scores["dense"] = scores.pop("reference")

    results: dict[str, dict] = {}
    for name, loaded in (("dense", dense), ("compressed", compressed)):
        onnx_path, gguf_path = out / f"{name}-{args.onnx_precision}.onnx", out / f"{name}-{args.gguf_type}.gguf"
        bench = dict(prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, threads=args.threads)
        results[name] = {"parameters": count_parameters(loaded.model), "scores": scores[name]}
        for fmt, path, export in (("onnx", onnx_path, lambda p: export_onnx(loaded, p, (args.onnx_precision,), progress=say)),
                                  ("gguf", gguf_path, lambda p: export_gguf(loaded, p, weight_type=args.gguf_type,
                                                                            progress=say))):
            say(f"{name}: {fmt.upper()} export")
            try:
                made = export(path)
            except TensoredgeError as exc:  # an export that fails its own check is reported, not fatal
                say(f"{name}: {fmt.upper()} export refused: {exc}")
                results[name][fmt] = {"refused": str(exc)}
                continue
            results[name][fmt] = {"export": made,
                                  "bench": bench_in_subprocess(path, out / f"bench-{name}-{fmt}.json", **bench)}

    summary = {
        "schema": "tensoredge.pipeline/1",
        "arguments": {k: v for k, v in vars(args).items() if k != "json"},
        "command": command_line(sys.argv[1:]) if sys.argv[1:2] == ["pipeline"] else None,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dense.name,
        "source": dense.source,
        "plan": plan,
        "evaluation": {"dataset": "wikitext-2 test", **setup, "windows": len(windows)},
        "compress_seconds": compress_s,
        "fc_budget": allocation,
        "variants": results,
        "machine": next(v[f]["bench"]["machine"] for v in results.values() for f in ("onnx", "gguf")
                        if "bench" in v[f]),
        "seconds": time.time() - started,
    }
    write_json(summary, out / "summary.json")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    headers, rows = summary_rows(summary)
    print(text_table(headers, rows))
    for line in front_verdict(summary):
        print(line)
    print(f"report: {out}/summary.md  ({summary['seconds']:.0f} s)")
    return summary

