"""Checks that run before any model is loaded, so bad input costs a second, not minutes.

`check(args)` runs for every `tensoredge` command (toolkit.cli calls it): outputs (--out, --json:
device_bench.files.check_output), evaluation windows and contexts, compression plans and budgets,
prompts. Torch is imported only for the commands that load it anyway.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from device_bench.context import config_context, file_context
from device_bench.errors import BenchError
from device_bench.files import check_output
from toolkit.errors import TensoredgeError

INPUTS = ("model", "container", "adapter", "teacher", "reference", "base_gguf")  # args that name input paths


def output_kind(args: argparse.Namespace) -> str | None:
    """The kind (device_bench.files.KINDS) of what `args.out` will hold, or None when there is no --out."""
    command = args.command
    if command == "export":
        return {"onnx": "onnx", "gguf": "gguf", "container": "container"}[args.format]
    if command == "adapter":
        return "lora" if args.action == "export" else "compressed"
    return {"compress": "compressed", "materialize": "gguf", "heal": "heal", "heal-data": "samples",
            "report": "report", "pipeline": "pipeline"}.get(command)


def input_paths(args: argparse.Namespace) -> list[str]:
    found = [getattr(args, name, None) for name in INPUTS] + list(getattr(args, "runs", None) or [])
    return [ref for ref in found if isinstance(ref, str)]


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model, for the parsed `args` of any command."""
    if args.command == "pipeline" and not args.out:
        args.out = str(Path("tensoredge-out") / Path(args.model).name)
    inputs = input_paths(args)
    kind = output_kind(args)
    if kind and args.out is not None:
        check_output(args.out, kind, inputs, force=getattr(args, "force", False))
    if args.command == "sweep":
        check_sweep_outputs(args)
    if getattr(args, "json", None):
        if kind and args.out and Path(args.json).resolve().is_relative_to(Path(args.out).resolve()):
            raise TensoredgeError(f"--json {args.json} is inside --out {args.out}: write it elsewhere")
        check_output(args.json, "json", inputs, flag="--json")
    if args.command in ("eval", "heal", "pipeline", "sweep"):
        check_window(args)
    if args.command == "compress":
        check_compress(args)
    if args.command == "pipeline" and plan_of(args):
        from toolkit.compress import check_plan

        check_plan(plan_of(args))
    if args.command == "generate" and not args.prompt:
        raise TensoredgeError("--prompt is empty: give the text to continue")
    if args.command == "generate" and args.max_new_tokens < 1:
        raise TensoredgeError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")


def plan_of(args: argparse.Namespace) -> dict[str, str]:
    """The --embedding/--mlp/--attention specs given, by target."""
    return {target: spec for target in ("embedding", "mlp", "attention") if (spec := getattr(args, target, None))}


def check_sweep_outputs(args: argparse.Namespace) -> None:
    """The sweep's JSON, and beside it its .md and .png, may only replace an earlier sweep's."""
    stem = Path(args.out) / f"{args.target}-sweep"
    files = [stem.with_suffix(s) for s in (".json", ".md", ".png")]
    check_output(files[0], "json", force=False, companions=files[1:])
    partial = stem.with_name(stem.name + ".partial.json")
    if args.target == "embedding":
        check_output(partial, "json")
    if args.ray:
        from toolkit.sweep.distributed import require_ray

        require_ray()
    if args.heal is not None and args.heal < 1:
        raise TensoredgeError(f"--heal {args.heal}: give at least 1 healing step")
    if args.heal is not None:
        from toolkit.sweep.heal import check_data

        check_data(args.heal_data)
    if args.heal is not None and args.heal_tokens < args.heal_batch * args.heal_seq_len:
        raise TensoredgeError(f"--heal-tokens {args.heal_tokens}: give at least one batch "
                              f"(--heal-batch x --heal-seq-len = {args.heal_batch * args.heal_seq_len} tokens)")
    if args.task_cpus < 1:
        raise TensoredgeError(f"--task-cpus {args.task_cpus} must be at least 1")
    if not (0 < args.task_gpus <= 1 or float(args.task_gpus).is_integer()):
        raise TensoredgeError(f"--task-gpus {args.task_gpus:g}: give a fraction of one GPU (e.g. 0.25) or a whole number")
    if args.device != "cpu":
        from toolkit.commands import check_device

        check_device(args.device)


def model_context(ref: str) -> int | None:
    """The position limit of model `ref`, read without loading it (None when only loading tells)."""
    from models import REGISTRY

    if ref in REGISTRY:
        return REGISTRY[ref].context
    path = Path(ref).expanduser()
    try:
        if (path / "manifest.json").is_file():  # a compressed folder: a bad manifest fails here, early
            from toolkit.checkpoint import read_manifest

            return config_context(read_manifest(path)["config"])
        if path.is_dir():  # a Hugging Face folder or an ONNX export
            config = path / "config.json"
            return config_context(json.loads(config.read_text())) if config.is_file() else None
        return file_context(path) if path.is_file() else None  # .gguf, .onnx, .ort
    except BenchError as exc:
        raise TensoredgeError(str(exc)) from None
    except (OSError, ValueError):
        return None


def check_window(args: argparse.Namespace) -> None:
    """--context, --stride, --max-tokens (and heal's --seq-len, --steps, ...) are positive and fit the
    model's context."""
    for name, least in (("context", 2), ("stride", 1), ("max_tokens", 2), ("seq_len", 2), ("steps", 1),
                        ("batch", 1), ("checkpoint_every", 1), ("rank", 1), ("order", 1)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise TensoredgeError(f"--{name.replace('_', '-')} {value} must be at least {least}")
    if args.context and args.stride and args.stride > args.context:
        raise TensoredgeError(f"--stride {args.stride} must not exceed --context {args.context}")
    lengths = {"--context": args.context or 0, "--seq-len": getattr(args, "seq_len", None) or 0,
               "--heal-seq-len": (getattr(args, "heal_seq_len", None) or 0) if getattr(args, "heal", None) else 0}
    flag, longest = max(lengths.items(), key=lambda item: item[1])
    if longest:
        limit = model_context(args.model)
        if limit is not None and longest > limit:
            raise TensoredgeError(f"{flag} {longest} is longer than the context of {args.model} ({limit} tokens): "
                                  f"use at most {limit}")


def check_compress(args: argparse.Namespace) -> None:
    """The plan and the --fc budget, and that the model is not already a compressed folder."""
    from toolkit.compress import check_plan
    from toolkit.compress.budget import check_budget
    from toolkit.compress.context import check_calibration

    if (Path(args.model) / "manifest.json").is_file():  # already compressed: refuse compressing it again
        from toolkit.checkpoint import read_manifest

        manifest = read_manifest(args.model)
        plan = " ".join(f"--{target} {spec}" for target, spec in manifest["plan"].items())
        if plan:  # an empty plan is a dense model saved as a folder (e.g. a healing teacher): compressible
            raise TensoredgeError(f"{args.model} is already compressed ({plan}): compress its base model "
                                  f"'{manifest['base_model']}' with one combined plan instead")
    check_plan(plan_of(args))
    check_calibration(args.calibration)
    if args.fc is not None:
        for name in ("remove", "max_ppl_increase"):
            value = getattr(args, name)
            if value is not None and not math.isfinite(value):
                raise TensoredgeError(f"--{name.replace('_', '-')} {value} must be a finite fraction")
        check_budget(args.fc, args.remove, args.max_ppl_increase, args.alloc)
