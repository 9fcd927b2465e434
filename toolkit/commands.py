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
    """Windows of the held-out text (--text, default WikiText-2 test) for `loaded`, and the settings used."""
    from device_bench.context import config_context
    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import text_windows

    context = args.context or loaded.eval_context
    limit = config_context(loaded.model.config.to_dict()) if hasattr(loaded.model, "config") else None
    if limit is not None and context > limit:  # models whose context only loading tells (hub ids)
        raise TensoredgeError(f"--context {context} is longer than the model's context of {limit} tokens")
    return text_windows(loaded.tokenizer, getattr(args, "text", "wikitext2"), args.max_tokens, context, args.stride)


def is_onnx_export(ref: str) -> bool:
    """An export directory (model.onnx / model.ort inside) or a .onnx / .ort file."""
    from device_bench.onnx_lm import MODEL_FILES

    path = Path(ref)
    return (path.is_dir() and any((path / name).is_file() for name in MODEL_FILES)) or \
        (path.is_file() and path.suffix.lower() in (".onnx", ".ort"))


def eval(args: argparse.Namespace) -> dict:  # noqa: A001 - the command is called eval
    """Perplexity of a PyTorch model or, through ONNX Runtime itself, of an ONNX export."""
    from toolkit.checkpoint import is_compressed_dir, open_model, read_manifest
    from toolkit.data import TEXTS
    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import OnnxModel, compare, default_batch

    check_device(args.device)
    if args.fake_quant:
        from toolkit.quant import check

        check(int(args.fake_quant[3:]), args.quant_block)
    elif args.quant_zero_points:
        raise TensoredgeError("--quant-zero-points goes with --fake-quant int4|int8")
    reference_ref = args.reference
    if is_onnx_export(args.model):
        loaded = OnnxModel(args.model)
        reference_ref = reference_ref or loaded.reference
    else:
        loaded = open_model(args.model)
        if reference_ref is None and is_compressed_dir(args.model):
            reference_ref = read_manifest(args.model)["base_model"]
    device = args.device
    if isinstance(loaded, OnnxModel) and device != "cpu":
        raise TensoredgeError("an ONNX export is evaluated by ONNX Runtime on the CPU: drop --device")
    if args.batch is not None and args.batch < 1:
        raise TensoredgeError(f"--batch {args.batch}: give at least 1 window per forward pass")
    batch = args.batch or default_batch(device)
    windows, setup = evaluation_windows(loaded, args)
    say(f"evaluating {loaded.name} on {setup['tokens']:,} of the {setup['split_tokens']:,} tokens of "
        f"{TEXTS[args.text].what}, {len(windows)} windows, {batch} per forward pass on {device}")
    if not isinstance(loaded, OnnxModel):
        loaded.model.to(device)
    quant = fake_quant_context(loaded, args)
    if reference_ref and not args.no_reference:
        reference = open_model(reference_ref)
        reference.model.to(device)
        with quant:
            scores = compare(reference.model, {"model": loaded.model}, windows, progress=say, device=device, batch=batch)
        scores["reference"]["name"] = reference.name
    else:
        with quant:
            scores = {"model": compare(loaded.model, {}, windows, progress=say, device=device, batch=batch)["reference"]}
    rows = [[name, num(s["perplexity"], 5), num(s.get("kl"), 3), num(s.get("top1_agreement"), 3)]
            for name, s in scores.items()]
    print(text_table(["", "perplexity", "KL", "top-1 agree"], rows))
    print(f"{setup['tokens']:,} tokens of {args.text} ({TEXTS[args.text].what}), windows of {setup['context']} "
          f"every {setup['stride']}")
    return {"model": loaded.name, "runtime": getattr(loaded, "runtime", "pytorch"),
            "dataset": "wikitext-2 test" if args.text == "wikitext2" else args.text, "device": device, **setup,
            "fake_quant": {"bits": int(args.fake_quant[3:]), "block": args.quant_block,
                           "symmetric": not args.quant_zero_points} if args.fake_quant else None,
            "scores": scores}


def fake_quant_context(loaded, args: argparse.Namespace):
    """`eval --fake-quant`: the model computes with MatMulNBits-quantized weights inside the context."""
    from contextlib import nullcontext

    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import OnnxModel
    from toolkit.quant import quant_aware

    if not args.fake_quant:
        return nullcontext()
    if isinstance(loaded, OnnxModel):
        raise TensoredgeError("--fake-quant simulates quantization in PyTorch: evaluate the compressed folder, "
                              "or export with the quantization and evaluate that export")
    return quant_aware(loaded.model, int(args.fake_quant[3:]), args.quant_block, not args.quant_zero_points)


def check_device(device: str) -> None:
    """A one-line error for a torch device this machine does not have."""
    import torch

    from toolkit.errors import TensoredgeError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TensoredgeError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise TensoredgeError(f"--device {device}: not a device; use cpu or cuda")


def compress(args: argparse.Namespace) -> dict:
    from toolkit.checkpoint import open_model, save_compressed
    from toolkit.preflight import plan_of
    from toolkit.compress import compress_
    from toolkit.compress.context import check_calibration
    from toolkit.counting import count_parameters
    from toolkit.errors import TensoredgeError

    plan = plan_of(args)
    budget = fc_budget(args)
    if not plan and not budget:
        raise TensoredgeError("nothing to compress: give --embedding, --mlp and/or --attention SPEC, e.g. --mlp svd:ratio=1.5, "
                              "or --fc METHOD with --remove or --max-ppl-increase")
    check_plan_budget(plan, budget, args.scope)
    check_device(args.device)
    calibration = check_calibration(args.calibration)
    check_profile_option(args)
    args.shipped_profile = shipped_profile(args)
    loaded = open_model(args.model)
    before = count_parameters(loaded.model)
    start = time.time()
    if plan:
        compress_(loaded.model, loaded.family, plan, tokenizer=loaded.tokenizer, progress=say, device=args.device,
                  calibration=calibration)
    allocation = None
    if budget:
        allocation = run_fc_budget(loaded, args, calibration)
        if calibration != ("valid",):
            budget += f",calibration={'+'.join(calibration)}"
        plan = plan | {"fc": budget} | allocation.get("plan", {})
        say(f"fc: {allocation['removed_of_fc']:.1%} of the MLP + attention parameters removed "
            f"({allocation['layers_dense']} of {allocation['layers']} layers left dense)")
        if "split" in allocation:
            print(split_table(allocation))
    seconds = time.time() - start
    after = count_parameters(loaded.model)
    save_compressed(loaded, plan, args.out)
    print(parameter_table(before, after))
    print(f"saved to {args.out} ({seconds:.1f} s to compress)")
    return {"model": loaded.name, "plan": plan, "calibration": list(calibration), "out": args.out, "seconds": seconds,
            "parameters_before": before, "parameters_after": after, "fc_budget": allocation}


def check_plan_budget(plan: dict[str, str], budget: str | None, scope: str) -> None:
    """Targets named twice, by a plan and by the --fc budget, are one-line errors."""
    from toolkit.errors import TensoredgeError

    if budget and ({"mlp", "attention"} & set(plan)):
        raise TensoredgeError("--fc already compresses the MLP and attention layers: drop --mlp/--attention")
    if scope == "all" and "embedding" in plan:
        raise TensoredgeError("--scope all chooses the embedding and head itself: drop --embedding")


def fc_budget(args: argparse.Namespace) -> str | None:
    """The --fc budget as text for the manifest's plan, or None; half-given budgets are errors."""
    from toolkit.errors import TensoredgeError

    if args.fc is None:
        if args.remove is not None or args.max_ppl_increase is not None:
            raise TensoredgeError("--remove and --max-ppl-increase need --fc METHOD, e.g. --fc svd-llm --remove 0.2")
        return None
    if (args.remove is None) == (args.max_ppl_increase is None):
        raise TensoredgeError("--fc needs exactly one of --remove FRACTION or --max-ppl-increase FRACTION")
    if args.scope == "all" and (args.alloc != "sensitivity" or args.remove is None):
        raise TensoredgeError("--scope all needs --alloc sensitivity and --remove FRACTION")
    goal = f"remove={args.remove:g}" if args.remove is not None else f"max_ppl_increase={args.max_ppl_increase:g}"
    return f"{args.fc}:{goal},alloc={args.alloc}" + (",scope=all" if args.scope == "all" else "")


def set_budget(args: argparse.Namespace, text: str | None) -> None:
    """Set --fc/--remove/--max-ppl-increase/--alloc from a budget as plans record it
    ("svd-llm:max_ppl_increase=0.1,alloc=surgical"), e.g. a registered model's demo plan."""
    if not text:
        return
    method, _, params = text.partition(":")
    values = dict(item.split("=", 1) for item in params.split(",") if item)
    args.fc, args.alloc = method, values.get("alloc", args.alloc)
    for key in ("remove", "max_ppl_increase"):
        if key in values:
            setattr(args, key, float(values[key]))


def check_profile_option(args: argparse.Namespace) -> None:
    """--sensitivity-profile, before any loading: an existing file must be a profile, a new one needs
    --alloc sensitivity or refined (the allocations that measure) and a folder to go in."""
    from pathlib import Path

    from toolkit.compress import profile_file
    from toolkit.compress.budget import MEASURED
    from toolkit.errors import TensoredgeError

    path = getattr(args, "sensitivity_profile", None)
    if not path:
        return
    if args.alloc not in MEASURED:
        raise TensoredgeError(f"--sensitivity-profile is for --alloc sensitivity or refined (not {args.alloc})")
    if Path(path).exists():
        profile_file.read(path)
    elif not Path(path).parent.is_dir():
        raise TensoredgeError(f"--sensitivity-profile {path}: the folder {Path(path).parent} does not exist")


def shipped_profile(args: argparse.Namespace) -> str | None:
    """The sensitivity profile a registered model ships for the budget's method, when the budget measures
    sensitivity and no --sensitivity-profile is given (run_fc_budget checks it fits these weights)."""
    from toolkit.compress.budget import MEASURED
    from models import REGISTRY
    from models.assets import sensitivity_profile

    spec = REGISTRY.get(args.model)
    if args.fc is None or args.alloc not in MEASURED or getattr(args, "sensitivity_profile", None) or spec is None:
        return None
    name = spec.sensitivity_profiles.get(args.fc)
    return str(sensitivity_profile(name)) if name else None


def run_fc_budget(loaded, args: argparse.Namespace, calibration: tuple[str, ...] = ("valid",)) -> dict:
    """The --fc budget applied to `loaded`, with the sensitivity profile read from or written to
    --sensitivity-profile when given."""
    from toolkit.compress.context import Context
    from toolkit.compress.sensitivity import SensitivityConfig

    sensitivity = SensitivityConfig(tokens=args.sensitivity_tokens)
    ctx = Context(loaded.model, loaded.family, loaded.tokenizer, device=args.device, calibration=calibration)
    path, shipped = getattr(args, "sensitivity_profile", None), getattr(args, "shipped_profile", None)
    if not path and not shipped:
        return _run_fc_budget(loaded, args, ctx, sensitivity)
    from pathlib import Path

    from toolkit.compress import profile_file
    from toolkit.errors import TensoredgeError

    ident = profile_file.identity(loaded.model, args.fc, calibration, ctx.calibration_tokens, sensitivity)
    key = f"sensitivity:{args.fc}"
    if path and Path(path).exists():
        ctx.cache[key] = profile_file.read(path, ident)
        say(f"sensitivity profile read from {path} (measured in {ctx.cache[key].get('seconds', 0):.0f} s)")
    elif shipped:  # the profile shipped with a registered model: used only for the very weights it was measured on
        try:
            ctx.cache[key] = profile_file.read(shipped, ident)
            say(f"sensitivity profile: the one shipped with the model ({Path(shipped).name}), not measured again")
        except TensoredgeError as exc:
            say(f"the shipped sensitivity profile does not apply ({exc}): measuring it")
    if not path:
        return _run_fc_budget(loaded, args, ctx, sensitivity)
    result = _run_fc_budget(loaded, args, ctx, sensitivity)
    if not Path(path).exists() and key in ctx.cache:
        profile_file.write(path, ctx.cache[key], ident)
        say(f"sensitivity profile written to {path}")
    return result


def _run_fc_budget(loaded, args: argparse.Namespace, ctx, sensitivity) -> dict:
    from toolkit.compress.budget import compress_budget_, compress_to_perplexity_

    if args.scope == "all":
        from toolkit.compress.whole_model import WholeModelConfig, compress_whole_

        return compress_whole_(loaded.model, loaded.family, args.fc, args.remove, tokenizer=loaded.tokenizer,
                               progress=say, device=args.device, config=WholeModelConfig(sensitivity=sensitivity),
                               ctx=ctx)
    if args.remove is not None:
        return compress_budget_(loaded.model, loaded.family, args.fc, args.remove, args.alloc,
                                tokenizer=loaded.tokenizer, progress=say, device=args.device, sensitivity=sensitivity,
                                ctx=ctx)
    return compress_to_perplexity_(loaded.model, loaded.family, args.fc, args.max_ppl_increase, args.alloc,
                                   tokenizer=loaded.tokenizer, progress=say, device=args.device,
                                   sensitivity=sensitivity, ctx=ctx)


def split_table(allocation: dict) -> str:
    """Parameters removed per component, and weight bytes a decoded token reads before and after."""
    rows = [[c, f"{r['before']:,}", f"{r['after']:,}", f"{r['removed']:,}"] for c, r in allocation["split"].items()
            if r["before"] or r["after"]]
    read = allocation["bytes_read_per_token"]
    rows += [[f"read per token: {k}", mib(read["before"][k]), mib(read["after"][k]), ""] for k in ("head", "total")]
    return text_table(["target", "before", "after", "removed"], rows)


def sweep(args: argparse.Namespace) -> dict:
    return sweep_fc(args) if args.target == "fc" else sweep_embedding(args)


def sweep_heal_settings(args: argparse.Namespace):
    """`sweep --heal STEPS` and its options as a HealSettings (None without --heal)."""
    from toolkit.sweep.heal import HealSettings

    if not args.heal:
        return None
    return HealSettings(args.heal, args.heal_batch, args.heal_seq_len, args.heal_lr, args.heal_tokens, args.heal_data)


def sweep_fc(args: argparse.Namespace) -> dict:
    import json

    from toolkit.compress.sensitivity import SensitivityConfig
    from toolkit.errors import TensoredgeError
    import sys

    from toolkit.sweep import command_line
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
        heal = sweep_heal_settings(args)
        result = run_fc_sweep(args.model, out, removals, tuple(args.methods.split(",")), args.max_tokens,
                              args.calibration_tokens, args.objective, progress=say,
                              allocations=tuple(args.allocs.split(",")),
                              sensitivity=SensitivityConfig(tokens=args.sensitivity_tokens),
                              ray=args.ray, task_cpus=args.task_cpus, task_gpus=args.task_gpus, retry_failed=args.retry_failed, heal=heal,
                              device=args.device, command=command_line(sys.argv[1:]),
                              context=args.context, stride=args.stride, hopeless=args.hopeless)
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
    from toolkit.errors import TensoredgeError

    if args.format != "onnx" and (args.ort or args.precision != ["fp32"] or args.block_size != 32
                                  or args.accuracy_level != 4 or args.zero_points):
        raise TensoredgeError("--precision, --block-size, --zero-points, --accuracy-level and --ort apply to "
                              "`export onnx` only: "
                              "use --type for GGUF weight types")
    if args.block_size < 16 or args.block_size & (args.block_size - 1):
        raise TensoredgeError(f"--block-size {args.block_size}: give a power of two >= 16, e.g. 32")
    loaded = open_model(args.model)
    if args.format == "onnx":
        from exporters.onnx import export_onnx
        from toolkit.checkpoint import is_compressed_dir, read_manifest

        reference = read_manifest(args.model)["base_model"] if is_compressed_dir(args.model) else args.model
        result = export_onnx(loaded, args.out, precisions=tuple(args.precision), block_size=args.block_size,
                             accuracy_level=args.accuracy_level, symmetric=not args.zero_points,
                             ort_format=args.ort, reference=reference,
                             progress=say)
        print(onnx_export_table(result))
        return result
    elif args.format == "gguf":
        from exporters.gguf import export_gguf

        result = export_gguf(loaded, args.out, weight_type=args.type, progress=say)
    else:
        from exporters.gguf_container import export_container

        result = export_container(loaded, args.out, weight_type=args.type, progress=say)
    print_result(result)
    return result


def onnx_export_table(result: dict) -> str:
    """One row per written model file: size, nodes, and the check it passed."""
    rows = []
    for precision, entry in result["files"].items():
        if "parity" in entry:
            p = entry["parity"]
            check = (f"logits {p['max_abs_logit_diff']:.1e}, cached {p['max_abs_cached_diff']:.1e}, "
                     f"{p['greedy_tokens_equal']} greedy tokens equal")
            if "float64" in p:
                check += (f"; vs float64 {p['float64']['export']:.1e} (PyTorch fp32 "
                          f"{p['float64']['pytorch_fp32']:.1e})")
        else:
            a = entry["agreement"]
            check = f"rel. error {a['relative_logit_error']:.3f}, top-1 {a['top1_agreement']:.3f}"
        if precision in ("int8", "int4"):
            check = f"its own weights: {check}; vs float: rel. error " \
                    f"{entry['vs_float_model']['relative_logit_error']:.3f}"
        rows.append([entry["file"], precision, mib(entry["file_bytes"]), str(entry["nodes"]), check])
    for name, entry in result.get("ort", {}).get("files", {}).items():
        rows.append([name, "ORT format", mib(entry["file_bytes"]), "-", f"= .onnx within {entry['max_abs_diff_vs_onnx']:.1e}"])
    table = text_table(["file", "precision", "size", "nodes", "checked against PyTorch"], rows)
    return f"{table}\nexport: {result['path']} (model parameters {mib(result['model_param_bytes'])} fp32)"


def generate(args: argparse.Namespace) -> dict:
    """Torch-free streaming generation for an ONNX export; PyTorch greedy for any other model."""
    if is_onnx_export(args.model):
        from device_bench.generate import generate_text

        return generate_text(args.model, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                             args.top_p, args.seed, args.threads, truncate=args.truncate)
    import torch

    from toolkit.checkpoint import open_model
    from toolkit.errors import TensoredgeError

    if args.temperature or args.top_k or args.top_p != 1.0:
        raise TensoredgeError("sampling options need an ONNX export (--model EXPORT_DIR); "
                              "PyTorch models generate greedily here")

    from device_bench.context import config_context, fit_prompt

    loaded = open_model(args.model)
    encoded = loaded.tokenizer(args.prompt, truncation=False)["input_ids"]
    ids = torch.tensor([fit_prompt(encoded, args.max_new_tokens, config_context(loaded.model.config.to_dict()),
                                   args.truncate)])
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    text = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(args.prompt + text)
    return {"model": loaded.name, "prompt": args.prompt, "completion": text,
            "tokens": out[0, ids.shape[1]:].tolist()}


def materialize(args: argparse.Namespace) -> dict:
    from device_bench.materialize import materialize as rebuild

    result = rebuild(args.container, args.out, args.type, args.force)
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


def sweep_embedding(args: argparse.Namespace) -> dict:
    import sys

    from toolkit.errors import TensoredgeError
    from toolkit.sweep import command_line
    from toolkit.sweep import embedding

    if args.render_only:
        import json

        path = Path(args.out) / "embedding-sweep.json"
        if not path.is_file():
            raise TensoredgeError(f"--render-only needs {path}: run the sweep first")
        print(f"wrote {', '.join(map(str, embedding.render(json.loads(path.read_text()), path.with_suffix(''))))}")
        return {}
    if any(r <= 1 for r in (args.ratios or []) + (args.head_ratios or [])):
        raise TensoredgeError("every ratio must be > 1, e.g. --ratios 2 5 10")
    if args.variants is not None:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in args.variants if v not in embedding.VARIANTS]
        if unknown or not args.variants:
            raise TensoredgeError(f"--variants {','.join(unknown) or '(none)'}: choose from "
                                  f"{','.join(embedding.VARIANTS)} (comma-separated, e.g. --variants 'ttm,svd-table')")
    args.ratios = args.ratios or list(embedding.RATIOS)
    args.head_ratios = embedding.HEAD_RATIOS if args.head_ratios is None else args.head_ratios
    args.out = str(Path(args.out) / "embedding-sweep")
    heal = sweep_heal_settings(args)
    return embedding.sweep(args, command_line(sys.argv[1:]), heal)


def pipeline(args: argparse.Namespace) -> dict:
    from toolkit.pipeline import run_pipeline

    return run_pipeline(args)



def heal(args: argparse.Namespace) -> dict:
    """Distil a (compressed) model towards its teacher: all parameters, or TT-LoRA adapters."""
    from toolkit.heal.loop import HealConfig
    from toolkit.errors import TensoredgeError
    from toolkit.heal.run import HealJob, held_out_tokens, run, summary_rows

    check_device(args.device)
    if args.quant_zero_points and not args.quant:
        raise TensoredgeError("--quant-zero-points goes with --quant int4|int8")
    everything = args.train == "all"
    config = HealConfig(
        steps=args.steps, batch=args.batch, seq_len=args.seq_len, seed=args.seed, train=args.train,
        lr=args.lr if args.lr is not None else (3e-4 if everything else 2e-3),
        checkpoint_every=args.checkpoint_every or (200 if everything else 25),
        weight_decay=args.weight_decay, clip=args.clip if args.clip is not None else (1.0 if everything else 0.0),
        eval_every=args.eval_every if args.eval_every is not None else max(1, args.steps // 10),
        kl_chunk=args.kl_chunk, quant_bits=int(args.quant[3:]) if args.quant else 0, quant_block=args.quant_block,
        quant_symmetric=not args.quant_zero_points)
    job = HealJob(model=args.model, out=args.out, config=config, teacher=args.teacher, data=args.data,
                  device=args.device, time_limit=args.time_limit, targets=tuple(t for t in args.targets.split(",") if t),
                  rank=args.rank, order=args.order, alpha=args.alpha, merge=args.merge,
                  max_tokens=held_out_tokens(args.max_tokens, args.device), context=args.context, stride=args.stride, curve_tokens=args.curve_tokens)
    result = run(job, progress=say)
    print(text_table(["text", "tokens", "", "perplexity", "KL", "top-1 agree"], summary_rows(result)))
    print(f"saved to {result['saved']}" + (f"; merged model to {result['merge']['path']}" if "merge" in result else ""))
    return result


def heal_data(args: argparse.Namespace) -> dict:
    """`heal-data generate`: the teacher's own samples, cached as token ids for `heal --data generated=DIR`."""
    from toolkit.heal.samples import SampleSettings, generate_cache

    check_device(args.device)
    settings = SampleSettings(tokens=args.tokens, length=args.length, prompt_length=args.prompt_length,
                              temperature=args.temperature, top_p=args.top_p, batch=args.batch, seed=args.seed,
                              prompts=tuple(p.strip() for p in args.prompts.split(",")))
    info = generate_cache(args.teacher, args.out, settings, device=args.device, progress=say)
    print(f"{info['samples']:,} samples of {info['sample_tokens']} tokens ({info['tokens']:,} tokens) saved to "
          f"{args.out} in {info['seconds']:.0f} s")
    return info


def adapter(args: argparse.Namespace) -> dict:
    """`adapter export` (llama.cpp LoRA GGUF) and `adapter merge` (fold into the factors, save)."""
    import dataclasses

    from toolkit.adapters import load_adapters_, merge_adapters_
    from toolkit.checkpoint import is_compressed_dir, open_model, read_manifest, save_compressed

    loaded = open_model(args.model)
    load_adapters_(loaded.model, args.adapter)
    if args.action == "export":
        from exporters.lora_gguf import export_lora_gguf

        result = export_lora_gguf(loaded, args.out, rank=args.rank, tolerance=args.tolerance,
                                  base_gguf=args.base_gguf, progress=say)
    else:
        errors = merge_adapters_(loaded.model)
        manifest = read_manifest(args.model) if is_compressed_dir(args.model) else None
        base_name = manifest["base_model"] if manifest else loaded.name
        save_compressed(dataclasses.replace(loaded, name=base_name), manifest["plan"] if manifest else {}, args.out)
        result = {"path": args.out, "max_relative_error": max(errors.values(), default=0.0)}
    print_result(result)
    return result
