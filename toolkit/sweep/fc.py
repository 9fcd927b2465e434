"""`tensoredge sweep fc`: every FC-layer method at 10/20/30% of the MLP + attention parameters
removed, uniform vs surgical ranks (and sensitivity, with --allocs); perplexity and KL on
WikiText-2 test against the dense model.

Calibration is WikiText-2 valid. The dense reference's log-probabilities are computed once and
kept, so each variant costs one pass over the test windows. A method/allocation whose perplexity
already passes HOPELESS at a smaller removal is not run at larger ones (recorded as skipped).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from device_bench.files import write_json
from toolkit.files import atomic_path

HOPELESS = 1000.0  # perplexity past which larger removals are not measured
LOW_RANK = ("svd-llm", "feature", "asvd", "svd")
WHOLE_STACK = ("tt-linear", "trawl")  # uniform only: no per-rank factorization to allocate from
# Published anchors: LLaMA-7B, WikiText-2, 20% of the weights removed (SVD-LLM paper, Wang et al. 2024, Table 1).
ANCHORS = [
    {"method": "SVD (paper)", "removed": 0.2, "perplexity": 20061.0, "dense": 5.68},
    {"method": "ASVD (paper)", "removed": 0.2, "perplexity": 11.14, "dense": 5.68},
    {"method": "SVD-LLM (paper)", "removed": 0.2, "perplexity": 7.94, "dense": 5.68},
]


class Reference:
    """The dense model's log-probabilities on the test windows, kept for KL against each variant."""

    def __init__(self, model: torch.nn.Module, windows: list, progress: Callable[[str], None]):
        self.windows, self.logps = windows, []
        with torch.inference_mode():
            for window in windows:
                ids = torch.tensor([window.ids])
                self.logps.append(F.log_softmax(model(ids).logits[0, window.first_scored : -1].float(), dim=-1))
        self.scores = self.score(model)

    @torch.inference_mode()
    def score(self, model: torch.nn.Module) -> dict:
        nll = kl = agree = tokens = 0.0
        for window, ref in zip(self.windows, self.logps):
            ids = torch.tensor([window.ids])
            targets = ids[0, window.first_scored + 1 :]
            logp = F.log_softmax(model(ids).logits[0, window.first_scored : -1].float(), dim=-1)
            nll -= float(logp.gather(-1, targets[:, None]).sum())
            kl += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
            agree += float((logp.argmax(-1) == ref.argmax(-1)).sum())
            tokens += targets.numel()
        return {"perplexity": math.exp(nll / tokens), "kl": kl / tokens, "top1_agreement": agree / tokens}


def variants(removals: tuple[float, ...], methods: tuple[str, ...],
             allocations: tuple[str, ...] = ("surgical", "uniform")) -> list[tuple[str, str, float]]:
    """(method, allocation, removal) in the order given. A method written `name@0.1/0.2` is measured
    at those removals only (to spend the time where the answer is open)."""
    from toolkit.errors import TensoredgeError

    known = ("surgical", "uniform", "sensitivity", "refined")
    if not allocations or any(a not in known for a in allocations):
        raise TensoredgeError(f"allocations {','.join(allocations)} for sweep fc: choose from {', '.join(known)}")
    out = []
    for entry in methods:
        name, _, only = entry.partition("@")
        chosen = tuple(float(x) for x in only.split("/")) if only else removals
        if name not in LOW_RANK + WHOLE_STACK:
            raise TensoredgeError(f"unknown method '{name}' for sweep fc: choose from {', '.join(LOW_RANK + WHOLE_STACK)}")
        out += [(name, a, r) for a in (allocations if name in LOW_RANK else ("uniform",)) for r in chosen]
    return out


def whole_stack_spec(method: str, removal: float) -> str:
    ratio = 1 / (1 - removal)
    return f"tt-linear:ratio={ratio:.4f}" if method == "tt-linear" else f"trawl:decomp=tucker,ratio={ratio:.4f}"


def run_fc_sweep(model_ref: str, out_dir: Path, removals: tuple[float, ...] = (0.1, 0.2, 0.3),
                 methods: tuple[str, ...] = (*LOW_RANK, *WHOLE_STACK), max_tokens: int = 2048,
                 calibration_tokens: int = 8192, objective: str = "relative",
                 progress: Callable[[str], None] = print,
                 allocations: tuple[str, ...] = ("surgical", "uniform"), sensitivity=None) -> dict:
    """Measure every variant; after each one, rewrite <out_dir>/fc-sweep.json (partial runs keep).
    A `sensitivity` allocation measures each method's layers once (see toolkit.compress.sensitivity)."""
    from toolkit.checkpoint import open_model
    from toolkit.compress import compress_
    from toolkit.compress.budget import (MEASURED, allocate, apply_ranks_, factorize_fc, fc_paths, fc_profile,
                                         predicted_kl, refined_ranks, summary)
    from toolkit.compress.context import Context
    from toolkit.counting import count_parameters
    from toolkit.data import wikitext2_ids
    from toolkit.errors import TensoredgeError
    from toolkit.evaluate import strided_windows

    planned = variants(removals, methods, allocations)  # bad names: one line, before any work
    loaded = open_model(model_ref)
    model = loaded.model
    context = loaded.eval_context
    ids = wikitext2_ids(loaded.tokenizer, "test")[:max_tokens]
    windows = strided_windows(ids, context, context // 2)
    progress(f"dense reference on {len(ids)} WikiText-2 test tokens ({len(windows)} windows)")
    reference = Reference(model, windows, progress)
    fc_dense = sum(p.numel() for path in fc_paths(model, loaded.family) for p in model.get_submodule(path).parameters())
    result = {
        "model": loaded.name, "family": loaded.family, "dataset": "wikitext-2 test",
        "tokens": len(ids), "context": context, "stride": context // 2,
        "calibration": f"wikitext-2 valid, first {calibration_tokens} tokens", "surgical_objective": objective,
        "model_params": count_parameters(model)["total"]["params"], "fc_params": fc_dense,
        "dense": reference.scores, "anchors": ANCHORS, "hopeless_perplexity": HOPELESS, "rows": [],
    }
    out_path = Path(out_dir) / "fc-sweep.json"
    ctx = Context(model, loaded.family, loaded.tokenizer, calibration_tokens=calibration_tokens)
    hopeless: set[tuple[str, str]] = set()
    for method, how, removal in planned:
        for key in [k for k in ctx.cache if k.startswith("factorizations:") and k != f"factorizations:{method}"]:
            del ctx.cache[key]  # one method's factors at a time (about 1.5 GB for SmolLM2)
        row = {"method": method, "allocation": how, "remove": removal}
        if (method, how) in hopeless:
            result["rows"].append(row | {"skipped": f"perplexity > {HOPELESS:g} at a smaller removal"})
            continue
        start = time.time()
        try:
            trial = copy.deepcopy(model)
            if method in LOW_RANK:
                facts = factorize_fc(ctx, method, ("mlp", "attention"), progress)
                measured = fc_profile(ctx, method, facts, sensitivity, progress) if how in MEASURED else None
                if how == "refined":
                    ranks, passes = refined_ranks(ctx, method, facts, removal, sensitivity, progress)
                    row |= passes
                else:
                    ranks = allocate(facts, removal, how, objective, profile=measured)
                apply_ranks_(trial, facts, ranks)
                row |= summary(trial, facts, ranks)
                if measured is not None:
                    row |= {"predicted_kl": predicted_kl(measured, facts, ranks)}
            else:
                spec = whole_stack_spec(method, removal)
                compress_(trial, loaded.family, {"mlp": spec, "attention": spec}, tokenizer=loaded.tokenizer)
                unique = {id(p): p.numel() for path in fc_paths(trial, loaded.family)
                          for p in trial.get_submodule(path).parameters()}  # shared factors once
                total = count_parameters(trial)["total"]["params"]
                row |= {"spec": spec, "removed_of_fc": 1 - sum(unique.values()) / fc_dense,
                        "removed_of_model": 1 - total / result["model_params"]}
            built = time.time() - start
            progress(f"{method} {how} {removal:.0%}: built in {built:.0f} s, scoring")
            row |= reference.score(trial) | {"seconds_build": built, "seconds_total": time.time() - start}
        except TensoredgeError as exc:
            row |= {"skipped": str(exc)}
        del trial
        if row.get("perplexity", 0) > HOPELESS:
            hopeless.add((method, how))
        result["rows"].append(row)
        progress(f"{method} {how} {removal:.0%}: " + (row.get("skipped") or
                 f"ppl {row['perplexity']:.2f} (dense {reference.scores['perplexity']:.2f}), KL {row['kl']:.3f}, "
                 f"{row['removed_of_fc']:.1%} of FC / {row['removed_of_model']:.1%} of model removed"))
        write_json(result, str(out_path))
    return result


def label(row: dict) -> str:
    return f"{row['method']} ({row['allocation']})"


def render(result: dict, out_dir: Path) -> Path:
    """fc-sweep.md (table, anchors, settings) and fc-sweep.png (relative perplexity and KL vs removal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.table import markdown_table

    dense = result["dense"]["perplexity"]
    rows = []
    for row in result["rows"]:
        if "skipped" in row:
            rows.append([label(row), f"{row['remove']:.0%}", "-", "-", "-", "-", "-", "skipped: " + row["skipped"]])
            continue
        rows.append([label(row), f"{row['remove']:.0%}", f"{row['removed_of_fc']:.1%}", f"{row['removed_of_model']:.1%}",
                     f"{row['perplexity']:.2f}", f"{row['perplexity'] / dense - 1:+.0%}", f"{row['kl']:.3f}",
                     f"{row.get('layers_dense', '-')} of {row.get('layers', '-')} layers left dense"
                     if "layers" in row else row.get("spec", "")])
    for anchor in result["anchors"]:
        rows.append([anchor["method"] + ", LLaMA-7B", f"{anchor['removed']:.0%}", "-", f"{anchor['removed']:.0%}",
                     f"{anchor['perplexity']:g}", f"{anchor['perplexity'] / anchor['dense'] - 1:+.0%}", "-",
                     f"published (dense {anchor['dense']}); a different, 50x larger model"])
    headers = ["method (allocation)", "target", "removed of FC", "removed of model", "perplexity",
               "vs dense", "KL", "notes"]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[str, list] = {}
    for row in result["rows"]:
        if "perplexity" in row:
            series.setdefault(label(row), []).append(row)
    for name, points in series.items():
        style = "-" if "surgical" in name else ":" if "sensitivity" in name or "refined" in name else "--"
        x = [100 * p["removed_of_fc"] for p in points]
        axes[0].plot(x, [100 * (p["perplexity"] / dense - 1) for p in points], style, marker="o", label=name)
        axes[1].plot(x, [p["kl"] for p in points], style, marker="o", label=name)
    for anchor in result["anchors"]:
        axes[0].scatter([100 * anchor["removed"]], [100 * (anchor["perplexity"] / anchor["dense"] - 1)],
                        marker="*", s=140, zorder=5, label=anchor["method"] + " LLaMA-7B")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("perplexity increase over dense (%, log)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("KL(dense || compressed) per token (nats, log)")
    for ax in axes:
        ax.set_xlabel("% of MLP + attention parameters removed")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['model']}: WikiText-2 test, {result['tokens']} tokens (dense perplexity {dense:.2f})")
    fig.tight_layout()
    png = Path(out_dir) / "fc-sweep.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

    text = "\n".join([
        f"# FC-layer compression sweep: {result['model']}",
        "",
        f"Perplexity and KL(dense || compressed) on the first {result['tokens']} tokens of WikiText-2 test "
        f"(context {result['context']}, stride {result['stride']}); calibration: {result['calibration']}. "
        f"Dense perplexity {dense:.2f}. \"target\" is the fraction of the MLP + attention linears' parameters "
        f"({result['fc_params']:,} of the model's {result['model_params']:,}) asked to be removed.",
        "",
        markdown_table(headers, rows),
        "",
        "![perplexity and KL vs parameters removed](fc-sweep.png)",
    ])
    md = Path(out_dir) / "fc-sweep.md"
    with atomic_path(md) as tmp:
        tmp.write_text(text + "\n")
    return md
