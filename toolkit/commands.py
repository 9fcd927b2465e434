"""One function per CLI command: takes the parsed arguments, prints, returns the JSON result.

Imports of torch-based modules stay inside the functions so `bench` never loads torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toolkit.progress import say
from toolkit.table import mib, num, text_table


def print_result(result: dict) -> None:
    print(text_table(["", "value"], [[k, str(v)] for k, v in result.items()]))


def info(args: argparse.Namespace) -> dict:
    from models import REGISTRY

    if not args.model:
        rows = [[s.name, s.family, s.source] for s in REGISTRY.values()]
        print(text_table(["model", "family", "source"], rows))
        return {"models": [{"name": s.name, "family": s.family, "source": s.source,
                            "demo_plan": s.demo_plan, "notes": s.notes} for s in REGISTRY.values()]}
    from toolkit.checkpoint import open_model
    from toolkit.counting import COMPONENTS, count_parameters

    loaded = open_model(args.model)
    counts = count_parameters(loaded.model)
    rows = [[c, f"{counts[c]['params']:,}", mib(counts[c]["bytes"])] for c in (*COMPONENTS, "total")]
    print(f"{loaded.name}: {loaded.source}")
    print(text_table(["component", "parameters", "bytes"], rows))
    if counts["lm_head"]["tied"]:
        print("LM head is tied to the embedding: counted once, under embedding.")
    return {"model": loaded.name, "family": loaded.family, "source": loaded.source, "parameters": counts}


def evaluation_windows(loaded, args: argparse.Namespace) -> tuple[list, dict]:
    """WikiText-2 test windows for `loaded`, and the settings used."""
    from toolkit.data import wikitext2_ids
    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import strided_windows

    context = args.context or loaded.eval_context
    stride = args.stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise TensoredgeError(f"--stride {stride} must be between 1 and the context ({context})")
    every = wikitext2_ids(loaded.tokenizer, "test")
    ids = every[: args.max_tokens] if args.max_tokens else every
    setup = {"context": context, "stride": stride, "tokens": len(ids), "split_tokens": len(every)}
    return strided_windows(ids, context, stride), setup


def eval(args: argparse.Namespace) -> dict:  # noqa: A001 - the command is called eval
    from toolkit.checkpoint import is_compressed_dir, open_model, read_manifest
    from toolkit.evaluate import compare

    loaded = open_model(args.model)
    reference_ref = args.reference
    if reference_ref is None and not args.no_reference and is_compressed_dir(args.model):
        reference_ref = read_manifest(args.model)["base_model"]
    windows, setup = evaluation_windows(loaded, args)
    say(f"evaluating {loaded.name} on {setup['tokens']} WikiText-2 test tokens, {len(windows)} windows")
    if reference_ref and not args.no_reference:
        reference = open_model(reference_ref)
        scores = compare(reference.model, {"model": loaded.model}, windows, progress=say)
        scores["reference"]["name"] = reference.name
    else:
        scores = {"model": compare(loaded.model, {}, windows, progress=say)["reference"]}
    rows = [[name, num(s["perplexity"], 5), num(s.get("kl"), 3), num(s.get("top1_agreement"), 3)]
            for name, s in scores.items()]
    print(text_table(["", "perplexity", "KL", "top-1 agree"], rows))
    return {"model": loaded.name, "dataset": "wikitext-2 test", **setup, "scores": scores}


def compress(args: argparse.Namespace) -> dict:
    from toolkit.checkpoint import open_model, save_compressed
    from toolkit.cli import plan_of
    from toolkit.compress import compress_
    from toolkit.counting import count_parameters
    from toolkit.errors import TensoredgeError

    plan = plan_of(args)
    budget = fc_budget(args)
    if not plan and not budget:
        raise TensoredgeError("nothing to compress: give --embedding, --mlp and/or --attention SPEC, e.g. --mlp svd:ratio=1.5, "
                              "or --fc METHOD with --remove or --max-ppl-increase")
    if budget and ({"mlp", "attention"} & set(plan)):
        raise TensoredgeError("--fc already compresses the MLP and attention layers: drop --mlp/--attention")
    loaded = open_model(args.model)
    before = count_parameters(loaded.model)
    start = time.time()
    if plan:
        compress_(loaded.model, loaded.family, plan, tokenizer=loaded.tokenizer, progress=say)
    allocation = None
    if budget:
        allocation = run_fc_budget(loaded, args)
        plan = plan | {"fc": budget}
        say(f"fc: {allocation['removed_of_fc']:.1%} of the MLP + attention parameters removed "
            f"({allocation['layers_dense']} of {allocation['layers']} layers left dense)")
    seconds = time.time() - start
    after = count_parameters(loaded.model)
    save_compressed(loaded, plan, args.out)
    print(parameter_table(before, after))
    print(f"saved to {args.out} ({seconds:.1f} s to compress)")
    return {"model": loaded.name, "plan": plan, "out": args.out, "seconds": seconds,
            "parameters_before": before, "parameters_after": after, "fc_budget": allocation}


def fc_budget(args: argparse.Namespace) -> str | None:
    """The --fc budget as text for the manifest's plan, or None; half-given budgets are errors."""
    from toolkit.errors import TensoredgeError

    if args.fc is None:
        if args.remove is not None or args.max_ppl_increase is not None:
            raise TensoredgeError("--remove and --max-ppl-increase need --fc METHOD, e.g. --fc svd-llm --remove 0.2")
        return None
    if (args.remove is None) == (args.max_ppl_increase is None):
        raise TensoredgeError("--fc needs exactly one of --remove FRACTION or --max-ppl-increase FRACTION")
    goal = f"remove={args.remove:g}" if args.remove is not None else f"max_ppl_increase={args.max_ppl_increase:g}"
    return f"{args.fc}:{goal},alloc={args.alloc}"


def run_fc_budget(loaded, args: argparse.Namespace) -> dict:
    from toolkit.compress.budget import compress_budget_, compress_to_perplexity_

    if args.remove is not None:
        return compress_budget_(loaded.model, loaded.family, args.fc, args.remove, args.alloc,
                                tokenizer=loaded.tokenizer, progress=say)
    return compress_to_perplexity_(loaded.model, loaded.family, args.fc, args.max_ppl_increase, args.alloc,
                                   tokenizer=loaded.tokenizer, progress=say)


def sweep(args: argparse.Namespace) -> dict:
    import json

    from toolkit.errors import TensoredgeError
    from toolkit.sweep.fc import render, run_fc_sweep

    out = Path(args.out)
    if args.render_only:
        path = out / "fc-sweep.json"
        if not path.is_file():
            raise TensoredgeError(f"--render-only needs {path}: run the sweep first")
        result = json.loads(path.read_text())
    else:
        try:
            removals = tuple(float(x) for x in args.removals.split(","))
        except ValueError:
            raise TensoredgeError(f"--removals '{args.removals}' must be fractions, e.g. 0.1,0.2,0.3") from None
        result = run_fc_sweep(args.model, out, removals, tuple(args.methods.split(",")), args.max_tokens,
                              args.calibration_tokens, args.objective, progress=say)
    print(f"wrote {render(result, out)}")
    return result


def parameter_table(before: dict, after: dict) -> str:
    from toolkit.counting import COMPONENTS

    rows = []
    for c in (*COMPONENTS, "total"):
        b, a = before[c]["params"], after[c]["params"]
        rows.append([c, f"{b:,}", f"{a:,}", f"{b / a:.2f}x" if a else "-"])
    return text_table(["component", "before", "after", "ratio"], rows)


def export(args: argparse.Namespace) -> dict:
    from toolkit.checkpoint import open_model

    loaded = open_model(args.model)
    if args.format == "onnx":
        from exporters.onnx import export_onnx

        result = export_onnx(loaded, args.out, progress=say)
    elif args.format == "gguf":
        from exporters.gguf import export_gguf

        result = export_gguf(loaded, args.out, weight_type=args.type, progress=say)
    else:
        from exporters.gguf_container import export_container

        result = export_container(loaded, args.out, weight_type=args.type, progress=say)
    print_result(result)
    return result


def generate(args: argparse.Namespace) -> dict:
    import torch

    from toolkit.checkpoint import open_model

    loaded = open_model(args.model)
    ids = loaded.tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    text = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(args.prompt + text)
    return {"model": loaded.name, "prompt": args.prompt, "completion": text,
            "tokens": out[0, ids.shape[1]:].tolist()}


def materialize(args: argparse.Namespace) -> dict:
    from device_bench.materialize import materialize as rebuild

    result = rebuild(args.container, args.out, args.type)
    print_result(result)
    return result


def bench(args: argparse.Namespace) -> None:
    from device_bench.cli import bench as run

    run(args)  # writes --json itself


def report(args: argparse.Namespace) -> dict:
    from toolkit.report import write_report

    path = write_report([Path(p) for p in args.runs], Path(args.out))
    print(f"wrote {path}")
    return {"report": str(path)}


def pipeline(args: argparse.Namespace) -> dict:
    from toolkit.pipeline import run_pipeline

    return run_pipeline(args)

