"""Sweeps: compress the default model with a list of plans, evaluate each against the dense model,
and write the results as JSON, a Markdown table and a PNG plot under docs/ (each atomically).

A sweep module (e.g. toolkit.sweep.embedding) lists its `Entry`s, measures what it cares about in
each compressed model (`measure`), and turns the results into table rows and a plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.nn as nn

from device_bench.files import write_json
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path
from toolkit.progress import say


@dataclass
class Entry:
    """One compressed model to build: its plan and the labels the table groups it by."""

    plan: dict[str, str]
    labels: dict[str, object] = field(default_factory=dict)


Measure = Callable[[nn.Module, nn.Module], dict]  # (dense model, compressed model) -> columns


@dataclass
class Shared:
    """What every entry of a sweep reads (put in Ray's object store once per sweep)."""

    model: nn.Module
    family: str
    tokenizer: object
    reference: object  # toolkit.sweep.score.Reference on the evaluation windows
    measure: Measure
    device: str = "cpu"
    heal: object = None  # toolkit.sweep.heal.HealSettings: each entry healed before it is scored
    heal_ids: object = None  # the distillation text: WikiText-2 valid ids or a DataMix (toolkit.sweep.heal)


def run_entry(spec: dict, shared: Shared, _prepared: object = None) -> dict:
    """Compress a copy of the shared model with the entry's plan, measure it, score it against the
    dense reference; an infeasible plan (TensoredgeError) is kept with its error, any other failure
    with its one-line reason."""
    from toolkit.compress import compress_
    from toolkit.sweep.grid import one_line

    row = {"plan": spec["plan"], **spec["labels"]}
    began = time.time()
    try:
        model = copy.deepcopy(shared.model)
        compress_(model, shared.family, spec["plan"], tokenizer=shared.tokenizer)
        row["compress_seconds"] = round(time.time() - began, 2)
        row |= shared.measure(shared.model, model)
        model.to(shared.device)
        if shared.heal is not None:
            from toolkit.sweep.heal import heal_trial

            row |= {"unhealed": shared.reference.score(model, shared.device)}
            row |= heal_trial(model, shared.model, shared.heal_ids, shared.heal, shared.device)
        row |= shared.reference.score(model, shared.device)
    except TensoredgeError as exc:
        row["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded in the row; the sweep goes on
        row["failed"] = one_line(exc)
    return row


def run_entries(entries_for: Callable[[nn.Module], list[Entry]], args: argparse.Namespace, measure: Measure,
                partial: Path, heal=None) -> dict:
    """Compress and evaluate every entry (`entries_for(dense model)`) on WikiText-2 test of `args.model`,
    in this process or, with `args.ray`, as Ray tasks (toolkit.sweep.distributed), on `args.device`.
    With `heal` (toolkit.sweep.heal.HealSettings) each entry is scored, healed, and scored again.

    Finished rows go to `partial` (JSON) after every entry, and a re-run with the same model and
    evaluation window takes them from there instead of recomputing.
    """
    from toolkit.checkpoint import open_model
    from toolkit.commands import evaluation_windows
    from toolkit.sweep.grid import Ledger, LocalExecutor, Point, run_grid
    from toolkit.sweep.score import Reference

    ray = getattr(args, "ray", None)
    if ray:
        from toolkit.sweep.distributed import require_ray

        require_ray()
    loaded = open_model(args.model)
    windows, setup = evaluation_windows(loaded, args)
    entries = entries_for(loaded.model)
    device = getattr(args, "device", "cpu")
    key = {"model": loaded.name, **setup} | ({"heal": heal.record()} if heal else {})
    say(f"sweep of {len(entries)} plans on {loaded.name}, {setup['tokens']} WikiText-2 test tokens each; "
        "dense reference first")
    reference = Reference(loaded.model.eval(), windows, device)
    heal_ids = None
    if heal:
        from toolkit.sweep.heal import distillation_text

        heal_ids = distillation_text(heal, loaded.tokenizer)
    shared = Shared(loaded.model, loaded.family, loaded.tokenizer, reference, measure, device, heal, heal_ids)
    ledger = Ledger(partial, {"key": key}, ("key",), say)
    points = [Point(json.dumps(e.plan, sort_keys=True), i, str(i), {"plan": e.plan, "labels": e.labels})
              for i, e in enumerate(entries)]
    if ray:
        from toolkit.sweep.distributed import RayExecutor

        gpus = getattr(args, "task_gpus", 1.0) if device.startswith("cuda") else 0.0
        executor = RayExecutor(ray, shared, run_entry, None, getattr(args, "task_cpus", 1), gpus, say)
    else:
        executor = LocalExecutor(shared, run_entry)
    try:
        run_grid(points, ledger, executor, lambda row: None, say, getattr(args, "retry_failed", False), describe)
    finally:
        executor.close()
    rows = [{k: v for k, v in ledger.get(p.id).items() if k != "id"} | p.spec["labels"] for p in points]
    return {**key, "dataset": "wikitext-2 test", "reference": {**reference.scores, "tokens": setup["tokens"]},
            "machine": machine(), "rows": rows}


def describe(row: dict) -> str:
    if "perplexity" in row:
        return f"ppl {row['perplexity']:.5g}, KL {row['kl']:.3f}"
    return f"not built ({row.get('error') or row.get('failed')})"


def machine() -> dict:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def write_outputs(stem: Path, result: dict, markdown: str, plot: Callable[[Path], None]) -> list[Path]:
    """`stem`.json, `stem`.md and `stem`.png, each written under a temporary name and renamed; the
    partial results of `run_entries` (`stem`.partial.json) are removed."""
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_json(result, str(paths[0]))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown)
    with atomic_path(paths[2]) as tmp:
        plot(tmp)
    partial_path(stem).unlink(missing_ok=True)
    return paths


def partial_path(stem: Path) -> Path:
    """Where `run_entries` keeps finished rows while a sweep runs."""
    return stem.with_name(stem.name + ".partial.json")


def new_figure(panels: int = 1, width: float = 7.0):
    """A matplotlib Figure (no display needed) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, 5), dpi=120)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, k + 1) for k in range(panels)]


def command_line(argv: list[str]) -> str:
    """The command as a user types it."""
    import shlex

    return "tensoredge " + " ".join(shlex.quote(a) for a in argv)
