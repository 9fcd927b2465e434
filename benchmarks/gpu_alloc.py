"""Loss-aware budgets on a CUDA GPU (issue 14, items 3 and 7), scored on the FULL WikiText-2 test set.

- stage fc: svd-llm at 10/20/30% of the MLP + attention parameters removed, with uniform, surgical
  and sensitivity ranks;
- stage whole: 20% and 30% of ALL parameters removed, split between the FC layers, the embedding
  and the head by measured sensitivity (`--scope all`), beside FC-only sensitivity budgets that
  remove the same number of parameters;
- stage refine: `--alloc refined` at 10/20/30% of FC (sensitivity, then a second pass measured in
  the context of the first; each removal costs one more pass of measurements).

Every variant is scored against the dense model in lockstep, windows of 1024 every 512 batched on
the GPU: perplexity, KL and top-1 agreement on WikiText-2 test, plus the KL on the held-out
WikiText-2 valid tokens the sensitivities were measured on (the measured counterpart of the
additive prediction). Compressed models are saved under KEEP/<name> for healing; the sensitivity
profiles under KEEP/cache, so a later call on a warm machine does not measure them again.

    python3 benchmarks/gpu_alloc.py --model $GGUF --out $OUT [--stage fc|whole|all]

On the lent machine run it through benchmarks/gpu_alloc.sh. `--device cpu --max-tokens 2048` with
a tiny model is a dry run of the same code (tests/test_gpu_alloc.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from device_bench.files import write_json
from toolkit.checkpoint import save_compressed
from toolkit.compress.budget import (allocate, apply_ranks_, factorize_fc, fc_profile, predicted_kl, refined_ranks,
                                     summary)
from toolkit.compress.context import Context
from toolkit.compress.sensitivity import SensitivityConfig, check_profile, held_out_ids
from toolkit.compress.whole_model import (WholeModelConfig, allocate_whole, apply_whole_, bytes_read, json_config,
                                          split, whole_profile)
from toolkit.counting import count_parameters
from toolkit.data import wikitext2_ids
from toolkit.errors import TensoredgeError
from toolkit.evaluate import strided_windows
from toolkit.progress import say

ALLOCATIONS = ("uniform", "surgical", "sensitivity")


@torch.inference_mode()
def score_lockstep(dense: torch.nn.Module, candidates: dict[str, torch.nn.Module], windows: list,
                   device: str, batch: int) -> dict[str, dict]:
    """Perplexity of every model and KL(dense || candidate), top-1 agreement: windows of one length
    batched, the dense log-probs computed once per batch and compared with each candidate's."""
    sums = {name: {"nll": 0.0, "kl": 0.0, "agree": 0, "tokens": 0} for name in ("dense", *candidates)}
    groups: dict[int, list] = {}
    for w in windows:
        groups.setdefault(len(w.ids), []).append(w)
    batches = [ws[i : i + batch] for ws in groups.values() for i in range(0, len(ws), batch)]
    start = time.time()
    for n, chunk in enumerate(batches):
        ids = torch.tensor([w.ids for w in chunk], device=device)

        def scored(model: torch.nn.Module) -> list[torch.Tensor]:
            logits = model(ids).logits
            return [F.log_softmax(logits[i, w.first_scored : -1].float(), dim=-1) for i, w in enumerate(chunk)]

        reference = scored(dense)
        for name, model in (("dense", dense), *candidates.items()):
            logps = reference if name == "dense" else scored(model)
            for i, (w, logp) in enumerate(zip(chunk, logps)):
                targets = ids[i, w.first_scored + 1 :]
                s = sums[name]
                s["nll"] -= float(logp.gather(-1, targets[:, None]).sum())
                s["tokens"] += targets.numel()
                if name != "dense":
                    s["kl"] += float(F.kl_div(logp, reference[i], log_target=True, reduction="sum"))
                    s["agree"] += int((logp.argmax(-1) == reference[i].argmax(-1)).sum())
            del logps
        if (n + 1) % max(1, len(batches) // 10) == 0 or n + 1 == len(batches):
            elapsed = time.time() - start
            say(f"scoring: batch {n + 1}/{len(batches)}, {elapsed:.0f} s, about "
                f"{elapsed / (n + 1) * (len(batches) - n - 1):.0f} s left")
    out = {}
    for name, s in sums.items():
        out[name] = {"perplexity": math.exp(s["nll"] / s["tokens"]), "tokens": s["tokens"]}
        if name != "dense":
            out[name] |= {"kl": s["kl"] / s["tokens"], "top1_agreement": s["agree"] / s["tokens"]}
    return out


def cached(path: Path, make, check=lambda data: data):
    """JSON at `path` if it is there and passes `check`, else `make()` written there."""
    if path.is_file():
        try:
            data = check(json.loads(path.read_text()))
            say(f"reusing {path}")
            return data
        except Exception as exc:  # a stale or foreign file: measure again
            say(f"not reusing {path}: {exc}")
    data = make()
    write_json(data, str(path))
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the default model's GGUF (or any model load_model takes)")
    p.add_argument("--out", required=True, help="folder for gpu_alloc.json")
    p.add_argument("--keep", default="/tmp/alloc", help="folder for the compressed models and cached profiles")
    p.add_argument("--stage", choices=["fc", "whole", "refine", "all"], default="all",
                   help="all: fc and whole (refine is a call of its own)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--method", default="svd-llm")
    p.add_argument("--removals", default="0.1,0.2,0.3", help="fc stage: fractions of the FC parameters")
    p.add_argument("--whole", default="0.2,0.3", help="whole stage: fractions of all parameters")
    p.add_argument("--calibration-tokens", type=int, default=16384)
    p.add_argument("--sensitivity-tokens", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, help="score the first N test tokens (default: all)")
    p.add_argument("--eval-batch", type=int, default=8, help="windows per forward pass when scoring")
    p.add_argument("--no-save", action="store_true", help="do not keep the compressed models")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; use --device cpu for a dry run", file=sys.stderr)
        return 2
    from models import load_model

    started = time.time()
    out, keep = Path(args.out), Path(args.keep)
    (keep / "cache").mkdir(parents=True, exist_ok=True)
    say(f"loading {args.model}")
    loaded = load_model(args.model)
    model, family = loaded.model, loaded.family
    config = SensitivityConfig(tokens=args.sensitivity_tokens)
    whole_config = WholeModelConfig(sensitivity=config)
    ctx = Context(model, family, loaded.tokenizer, calibration_tokens=args.calibration_tokens, device=args.device)
    timings = {}
    t = time.time()
    facts = factorize_fc(ctx, args.method, ("mlp", "attention"), say)
    timings["factorize_s"] = time.time() - t
    tag = f"{args.method}-{args.calibration_tokens}-{args.sensitivity_tokens}"
    t = time.time()
    layers = cached(keep / "cache" / f"profile-{tag}.json",
                    lambda: fc_profile(ctx, args.method, facts, config, say), lambda d: check_profile(d, facts))
    ctx.cache[f"sensitivity:{args.method}"] = layers
    timings["sensitivity_fc_s"] = time.time() - t
    total = count_parameters(model)["total"]["params"]
    fc_dense = sum(f.dense_params() for f in facts.values())

    variants: dict[str, tuple[torch.nn.Module, dict]] = {}
    if args.stage in ("fc", "all"):
        for removal in (float(x) for x in args.removals.split(",")):
            for how in ALLOCATIONS:
                trial = copy.deepcopy(model)
                ranks = allocate(facts, removal, how, profile=layers)
                apply_ranks_(trial, facts, ranks)
                row = {"scope": "fc", "allocation": how, "remove": removal, **summary(trial, facts, ranks),
                       "predicted_kl": predicted_kl(layers, facts, ranks)}
                variants[f"{args.method}-{how}-{removal:g}"] = (trial, row)
    if args.stage == "refine":
        for removal in (float(x) for x in args.removals.split(",")):
            ranks, passes = refined_ranks(ctx, args.method, facts, removal, config, say)
            trial = copy.deepcopy(model)
            apply_ranks_(trial, facts, ranks)
            row = {"scope": "fc", "allocation": "refined", "remove": removal, **summary(trial, facts, ranks),
                   "predicted_kl": predicted_kl(layers, facts, ranks), **passes}
            variants[f"{args.method}-refined-{removal:g}"] = (trial, row)
            say(f"refined {removal:g}: valid KL {passes['first_pass_kl']:.4f} (first pass) -> "
                f"{passes['second_pass_kl']:.4f} (second), kept the {passes['kept_pass']}")
    if args.stage in ("whole", "all"):
        t = time.time()
        profile = cached(keep / "cache" / f"whole-{tag}.json",
                         lambda: whole_profile(ctx, args.method, facts, whole_config, say),
                         lambda d: check_profile(d, facts))
        timings["sensitivity_embedding_head_s"] = time.time() - t
        before, read_before = count_parameters(model), bytes_read(model, family)
        for removal in (float(x) for x in args.whole.split(",")):
            trial = copy.deepcopy(model)
            allocation = allocate_whole(trial, facts, profile, removal)
            plan = apply_whole_(trial, family, facts, allocation, loaded.tokenizer)
            parts = split(before, count_parameters(trial))
            row = {"scope": "all", "allocation": "sensitivity", "remove": removal, "plan": plan, "split": parts,
                   "removed_of_model": parts["total"]["removed"] / total,
                   "removed_of_fc": (parts["mlp"]["removed"] + parts["attention"]["removed"]) / fc_dense,
                   "layers_dense": sum(r == 0 for r in allocation["ranks"].values()), "layers": len(facts),
                   "predicted_kl": allocation["predicted_kl"],
                   "bytes_read_per_token": {"before": read_before, "after": bytes_read(trial, family)}}
            variants[f"whole-{removal:g}"] = (trial, row)
            # the same number of parameters taken from the FC layers alone
            fc_removal = parts["total"]["removed"] / fc_dense
            trial = copy.deepcopy(model)
            try:
                ranks = allocate(facts, fc_removal, "sensitivity", profile=layers)
            except TensoredgeError as exc:
                say(f"no FC-only budget removes as much as whole-{removal:g}: {exc}")
                continue
            apply_ranks_(trial, facts, ranks)
            row = {"scope": "fc (same parameters as whole)", "allocation": "sensitivity", "remove": fc_removal,
                   **summary(trial, facts, ranks), "predicted_kl": predicted_kl(layers, facts, ranks),
                   "bytes_read_per_token": {"before": read_before, "after": bytes_read(trial, family)}}
            variants[f"fc-for-whole-{removal:g}"] = (trial, row)

    if not args.no_save:
        t = time.time()
        for name, (trial, row) in variants.items():
            plan = {"fc": f"{args.method}:remove={row['remove']:g},alloc={row['allocation']}"
                          + (",scope=all" if row["scope"] == "all" else "")} | row.get("plan", {})
            row["saved"] = str(save_compressed(dataclasses.replace(loaded, model=trial), plan, keep / name))
        timings["save_s"] = time.time() - t
        say(f"saved {len(variants)} compressed models under {keep}")

    test = wikitext2_ids(loaded.tokenizer, "test")
    ids = test[: args.max_tokens] if args.max_tokens else test
    context = min(1024, loaded.eval_context)
    windows = strided_windows(ids, context, context // 2)
    held = held_out_ids(loaded.tokenizer, args.calibration_tokens, args.sensitivity_tokens).tolist()
    valid_windows = strided_windows(held, min(512, context), min(512, context))  # the probe's tokens, no overlap
    model.to(args.device)
    candidates = {name: trial.to(args.device) for name, (trial, _) in variants.items()}
    t = time.time()
    say(f"scoring dense + {len(candidates)} variants on {len(ids)} WikiText-2 test tokens ({len(windows)} windows)")
    scores = score_lockstep(model, candidates, windows, args.device, args.eval_batch)
    timings["score_test_s"] = time.time() - t
    valid = score_lockstep(model, candidates, valid_windows, args.device, args.eval_batch)
    rows = []
    for name, (_, row) in variants.items():
        rows.append({"name": name, **row, **scores[name], "valid_kl": valid[name]["kl"]})
    result = {
        "model": loaded.name, "family": family, "method": args.method, "stage": args.stage,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "test_tokens": len(ids), "test_split_tokens": len(test), "context": context, "stride": context // 2,
        "calibration": f"wikitext-2 valid, first {args.calibration_tokens} tokens",
        "sensitivity": {"tokens": layers["tokens"], "data": layers["data"], "kept": layers["config"]["kept"],
                        "measure": layers["measure"], "seconds": layers["seconds"]},
        "whole_model_options": json_config(whole_config),
        "model_params": total, "fc_params": fc_dense, "dense": scores["dense"], "rows": rows,
        "timings": timings | {"total_s": time.time() - started},
        "max_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, str(out / f"gpu_alloc-{args.stage}.json"))
    say(f"wrote {out / f'gpu_alloc-{args.stage}.json'} ({time.time() - started:.0f} s in all)")
    from benchmarks.render_alloc import table

    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
