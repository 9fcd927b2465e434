"""`tensoredge sweep fc`: every FC-layer method at 10/20/30% of the MLP + attention parameters
removed, uniform vs surgical ranks (and sensitivity, with --allocs); perplexity and KL on
WikiText-2 test against the dense model.

Calibration is WikiText-2 valid. The dense reference's log-probabilities are computed once and
kept, so each variant costs one pass over the test windows. A method/allocation whose perplexity
already passes HOPELESS at a smaller removal is not run at larger ones (recorded as skipped).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from toolkit.files import atomic_path
from toolkit.sweep.grid import Point, one_line
from toolkit.sweep.heal import HealSettings, distillation_text, heal_trial
from toolkit.sweep.score import Reference

HOPELESS = 1000.0  # perplexity past which larger removals are not measured
LOW_RANK = ("svd-llm", "feature", "asvd", "svd")
WHOLE_STACK = ("tt-linear", "trawl", "trawl-cp")  # trawl: Tucker  # uniform only: no per-rank factorization to allocate from
# Published anchors: LLaMA-7B, WikiText-2, 20% of the weights removed (SVD-LLM paper, Wang et al. 2024, Table 1).
ANCHORS = [
    {"method": "SVD (paper)", "removed": 0.2, "perplexity": 20061.0, "dense": 5.68},
    {"method": "ASVD (paper)", "removed": 0.2, "perplexity": 11.14, "dense": 5.68},
    {"method": "SVD-LLM (paper)", "removed": 0.2, "perplexity": 7.94, "dense": 5.68},
]


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
        try:
            chosen = tuple(float(x) for x in only.split("/")) if only else removals
        except ValueError:
            raise TensoredgeError(f"'{entry}': removals after @ are fractions, e.g. {name}@0.1/0.2") from None
        if name not in LOW_RANK + WHOLE_STACK:
            raise TensoredgeError(f"unknown method '{name}' for sweep fc: choose from {', '.join(LOW_RANK + WHOLE_STACK)}")
        out += [(name, a, r) for a in (allocations if name in LOW_RANK else ("uniform",)) for r in chosen]
    return out


def whole_stack_spec(method: str, removal: float) -> str:
    ratio = 1 / (1 - removal)
    if method == "tt-linear":
        return f"tt-linear:ratio={ratio:.4f}"
    return f"trawl:decomp={'cp' if method == 'trawl-cp' else 'tucker'},ratio={ratio:.4f}"


@dataclass
class Shared:
    """What every point of an FC sweep reads (put in Ray's object store once per sweep)."""

    model: torch.nn.Module
    family: str
    tokenizer: object
    calibration: torch.Tensor  # WikiText-2 valid ids
    calibration_tokens: int
    objective: str
    sensitivity: object  # SensitivityConfig or None
    measured: bool  # some allocation needs the measured sensitivity profile
    reference: Reference
    fc_dense: int
    model_params: int
    device: str = "cpu"
    heal: HealSettings | None = None
    heal_ids: object = None  # WikiText-2 valid ids or a DataMix (toolkit.sweep.heal.distillation_text)
    keep_context: bool = True  # in-process: one Context (calibration statistics) for every method


_CONTEXTS: dict[int, object] = {}  # id(shared) -> its Context, in this process (calibration stats kept)


def context_for(shared: Shared):
    """A compression Context on the shared model whose calibration ids are the shared ones."""
    from toolkit.compress.context import Context

    ctx = _CONTEXTS.get(id(shared))
    if ctx is None or ctx.model is not shared.model:
        ctx = Context(shared.model, shared.family, shared.tokenizer, calibration_tokens=shared.calibration_tokens,
                      device=shared.device)
        ctx.cache["ids"] = shared.calibration
        _CONTEXTS.clear()
        if shared.keep_context:  # a Ray task's copy of `shared` dies with the task: keep nothing
            _CONTEXTS[id(shared)] = ctx
    return ctx


def prepare_method(shared: Shared, method: str) -> dict:
    """A low-rank method's factorizations of every MLP and attention linear (and its measured
    sensitivity profile when an allocation needs one): shared by that method's points."""
    from toolkit.compress.budget import factorize_fc, fc_profile

    ctx = context_for(shared)
    for key in [k for k in ctx.cache if k.startswith(("factorizations:", "sensitivity:"))
                and not k.endswith(f":{method}")]:
        del ctx.cache[key]  # one method's factors at a time (about 1.5 GB for SmolLM2)
    start = time.time()
    facts = factorize_fc(ctx, method, ("mlp", "attention"))
    profile = fc_profile(ctx, method, facts, shared.sensitivity) if shared.measured else None
    return {"facts": facts, "profile": profile, "seconds": time.time() - start}


def point_id(method: str, allocation: str, removal: float) -> str:
    return f"{method}/{allocation}/{removal:g}"


def plan_points(planned: list[tuple[str, str, float]]) -> list[Point]:
    return [Point(point_id(m, a, r), i, f"{m}/{a}", {"method": m, "allocation": a, "remove": r},
                  m if m in LOW_RANK else None) for i, (m, a, r) in enumerate(planned)]


def run_point(spec: dict, shared: Shared, prepared: dict | None) -> dict:
    """Compress a copy of the shared model as `spec` says, (heal it,) score it against the dense
    reference. A refused plan is `skipped`, anything else that goes wrong `failed`: one line each."""
    from toolkit.compress import compress_
    from toolkit.compress.budget import MEASURED, allocate, apply_ranks_, fc_paths, predicted_kl, refined_ranks, summary
    from toolkit.counting import count_parameters
    from toolkit.errors import TensoredgeError

    method, how, removal = spec["method"], spec["allocation"], spec["remove"]
    row = dict(spec)
    start = time.time()
    try:
        trial = copy.deepcopy(shared.model)
        if method in LOW_RANK:
            facts, measured = prepared["facts"], prepared["profile"] if how in MEASURED else None
            row["seconds_prepare"] = prepared["seconds"]
            if how == "refined":
                ctx = context_for(shared)
                ctx.cache[f"sensitivity:{method}"] = prepared["profile"]
                ranks, passes = refined_ranks(ctx, method, facts, removal, shared.sensitivity)
                row |= passes
            else:
                ranks = allocate(facts, removal, how, shared.objective, profile=measured)
            apply_ranks_(trial, facts, ranks)
            row |= summary(trial, facts, ranks)
            if measured is not None:
                row |= {"predicted_kl": predicted_kl(measured, facts, ranks)}
        else:
            plan_spec = whole_stack_spec(method, removal)
            compress_(trial, shared.family, {"mlp": plan_spec, "attention": plan_spec}, tokenizer=shared.tokenizer)
            unique = {id(p): p.numel() for path in fc_paths(trial, shared.family)
                      for p in trial.get_submodule(path).parameters()}  # shared factors once
            total = count_parameters(trial)["total"]["params"]
            row |= {"spec": plan_spec, "removed_of_fc": 1 - sum(unique.values()) / shared.fc_dense,
                    "removed_of_model": 1 - total / shared.model_params}
        built = time.time() - start
        trial.to(shared.device)
        if shared.heal is not None:
            row |= {"unhealed": shared.reference.score(trial, shared.device)}
            row |= heal_trial(trial, shared.model, shared.heal_ids, shared.heal, shared.device)
        row |= shared.reference.score(trial, shared.device) | {"seconds_build": built,
                                                                "seconds_total": time.time() - start}
    except TensoredgeError as exc:
        row["skipped"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - out of memory, a numerical failure: recorded, the sweep goes on
        row["failed"] = one_line(exc)
    return row


def hopeless_past(limit: float) -> Callable[[dict], str | None]:
    """Larger removals of a method/allocation whose perplexity passed `limit` are not measured."""
    return lambda row: f"perplexity > {limit:g} at a smaller removal" if row.get("perplexity", 0) > limit else None


def describe(row: dict) -> str:
    if "perplexity" not in row:
        return row.get("skipped") and f"skipped ({row['skipped']})" or f"failed ({row.get('failed')})"
    return (f"ppl {row['perplexity']:.2f}, KL {row['kl']:.3f}, {row['removed_of_fc']:.1%} of FC / "
            f"{row['removed_of_model']:.1%} of model removed, {row['seconds_total']:.0f} s")


def prepare_shared(model_ref: str, max_tokens: int | None, calibration_tokens: int, objective: str,
                   allocations: tuple[str, ...], sensitivity=None, device: str = "cpu",
                   heal: HealSettings | None = None, context: int | None = None, stride: int | None = None,
                   progress: Callable[[str], None] = print) -> tuple[Shared, dict]:
    """Load the model once, tokenize calibration and test text, compute the dense reference: what
    every point shares, and the result's header."""
    from toolkit.checkpoint import open_model
    from toolkit.compress.budget import MEASURED, fc_paths
    from toolkit.compress.context import valid_ids
    from toolkit.counting import count_parameters
    from toolkit.data import wikitext2_ids
    from toolkit.evaluate import strided_windows

    loaded = open_model(model_ref)
    model = loaded.model.eval()
    context = context or loaded.eval_context
    stride = stride or context // 2
    ids = wikitext2_ids(loaded.tokenizer, "test")[:max_tokens]
    windows = strided_windows(ids, context, stride)
    progress(f"dense reference on {len(ids)} WikiText-2 test tokens ({len(windows)} windows)")
    reference = Reference(model, windows, device)
    fc_dense = sum(p.numel() for path in fc_paths(model, loaded.family) for p in model.get_submodule(path).parameters())
    valid = valid_ids(loaded.tokenizer)
    shared = Shared(model, loaded.family, loaded.tokenizer, valid[:calibration_tokens], calibration_tokens, objective,
                    sensitivity, any(a in MEASURED for a in allocations), reference, fc_dense,
                    count_parameters(model)["total"]["params"], device, heal,
                    distillation_text(heal, loaded.tokenizer) if heal else None)
    header = {
        "model": loaded.name, "family": loaded.family, "dataset": "wikitext-2 test",
        "tokens": len(ids), "context": context, "stride": stride,
        "calibration": f"wikitext-2 valid, first {calibration_tokens} tokens", "surgical_objective": objective,
        "sensitivity_tokens": getattr(sensitivity, "tokens", None),
        "heal": heal.record() if heal else None,
        "model_params": shared.model_params, "fc_params": fc_dense,
        "dense": reference.scores, "anchors": ANCHORS, "hopeless_perplexity": HOPELESS,
    }
    return shared, header


RESUME_KEY = ("model", "tokens", "context", "stride", "calibration", "surgical_objective", "sensitivity_tokens", "heal")


def run_fc_sweep(model_ref: str, out_dir: Path, removals: tuple[float, ...] = (0.1, 0.2, 0.3),
                 methods: tuple[str, ...] = (*LOW_RANK, *WHOLE_STACK), max_tokens: int = 2048,
                 calibration_tokens: int = 8192, objective: str = "relative",
                 progress: Callable[[str], None] = print,
                 allocations: tuple[str, ...] = ("surgical", "uniform"), sensitivity=None,
                 ray: str | None = None, task_cpus: int = 1, task_gpus: float = 1.0, retry_failed: bool = False,
                 heal: HealSettings | None = None, device: str = "cpu", command: str | None = None,
                 context: int | None = None, stride: int | None = None, hopeless: float = HOPELESS) -> dict:
    """Measure every variant, in this process or (`ray`: "local" or a cluster address) as Ray tasks;
    after each point, <out_dir>/fc-sweep.json is rewritten, and a rerun skips the points in it.
    A `sensitivity` allocation measures each method's layers once (see toolkit.compress.sensitivity)."""
    from toolkit.sweep.grid import Ledger, LocalExecutor, run_grid

    if ray:
        from toolkit.sweep.distributed import require_ray

        require_ray()
    planned = variants(removals, methods, allocations)  # bad names: one line, before any work
    began = time.time()
    shared, header = prepare_shared(model_ref, max_tokens, calibration_tokens, objective, allocations, sensitivity,
                                    device, heal, context, stride, progress)
    ledger = Ledger(Path(out_dir) / "fc-sweep.json", header, RESUME_KEY, progress)
    if ray:
        from toolkit.sweep.distributed import RayExecutor

        shared.keep_context = False
        gpus = task_gpus if device.startswith("cuda") else 0.0
        executor = RayExecutor(ray, shared, run_point, prepare_method, task_cpus, gpus, progress)
        del shared  # the object store holds it now
        runner = executor.describe
    else:
        executor, runner = LocalExecutor(shared, run_point, prepare_method), f"in-process, {torch.get_num_threads()} threads"
    runs = [r for r in ledger.header.get("runs", []) if isinstance(r, dict)]
    this_run = {"command": command, "runner": runner, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "wall_seconds": None, "points_recorded": 0}
    ledger.header |= {"hopeless_perplexity": hopeless, "command": command, "runner": runner, "machine": machine(),
                      "runs": [*runs, this_run]}  # every run that added points, with its wall time
    try:
        run_grid(plan_points(planned), ledger, executor, hopeless_past(hopeless), progress, retry_failed, describe)
    finally:
        executor.close()
        this_run |= {"wall_seconds": round(time.time() - began, 1), "points_recorded": ledger.recorded}
        ledger.header["wall_seconds"] = this_run["wall_seconds"]
        ledger.write()
    return ledger.result()


def machine() -> dict:
    from toolkit.sweep import machine as about

    return about()


def healed_note(row: dict) -> str:
    if "unhealed" not in row:
        return ""
    return f"; healed {row['heal']['steps']} steps (ppl {row['unhealed']['perplexity']:.2f} before)"


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
        if "perplexity" not in row:
            note = "skipped: " + row["skipped"] if "skipped" in row else "failed: " + str(row.get("failed"))
            rows.append([label(row), f"{row['remove']:.0%}", "-", "-", "-", "-", "-", note])
            continue
        rows.append([label(row), f"{row['remove']:.0%}", f"{row['removed_of_fc']:.1%}", f"{row['removed_of_model']:.1%}",
                     f"{row['perplexity']:.2f}", f"{row['perplexity'] / dense - 1:+.0%}", f"{row['kl']:.3f}",
                     (f"{row.get('layers_dense', '-')} of {row.get('layers', '-')} layers left dense"
                      if "layers" in row else row.get("spec", "")) + healed_note(row)])
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

    made = []
    if result.get("command"):
        made = [f"Made by `{result['command']}` ({result.get('runner', 'in-process')}).", ""]
        for run in result.get("runs", []):
            made.insert(-1, f"- run of {run['started']}: {run['points_recorded']} points recorded in "
                            f"{(run['wall_seconds'] or 0) / 60:.0f} min wall ({run['runner']})")
    text = "\n".join([
        f"# FC-layer compression sweep: {result['model']}",
        "",
        *made,
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
