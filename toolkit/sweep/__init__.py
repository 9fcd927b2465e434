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


def run_entries(entries_for: Callable[[nn.Module], list[Entry]], args: argparse.Namespace, measure: Measure,
                partial: Path, group: int = 5) -> dict:
    """Compress and evaluate every entry (`entries_for(dense model)`) on WikiText-2 test of `args.model`;
    `group` candidates share one reference pass.

    Finished rows go to `partial` (JSON) after every group, and a re-run with the same model and
    evaluation window takes them from there instead of recomputing. An entry whose plan is infeasible
    (a TensoredgeError while compressing) is kept with its error.
    """
    from toolkit.checkpoint import open_model
    from toolkit.commands import evaluation_windows
    from toolkit.compress import compress_
    from toolkit.evaluate import compare

    loaded = open_model(args.model)
    windows, setup = evaluation_windows(loaded, args)
    entries = entries_for(loaded.model)
    key = {"model": loaded.name, **setup}
    done = read_partial(partial, key)
    say(f"sweep of {len(entries)} plans on {loaded.name}, {setup['tokens']} WikiText-2 test tokens each"
        + (f" ({len(done['rows'])} already in {partial})" if done["rows"] else ""))
    rows: list[dict] = []
    pending: dict[str, nn.Module] = {}

    def evaluate() -> None:
        if pending:
            say(f"evaluating {len(pending)} plans ({len(rows)}/{len(entries)} built)")
            scores = compare(loaded.model, pending, windows)
            done["reference"] = scores["reference"]
            for index in pending:
                rows[int(index)] |= scores[index]
                done["rows"][json.dumps(rows[int(index)]["plan"], sort_keys=True)] = rows[int(index)]
            pending.clear()
        write_json(done, str(partial))

    for i, entry in enumerate(entries):
        cached = done["rows"].get(json.dumps(entry.plan, sort_keys=True))
        if cached is not None:
            rows.append({**cached, **entry.labels})
            continue
        row = {"plan": entry.plan, **entry.labels}
        model = copy.deepcopy(loaded.model)
        began = time.time()
        try:
            compress_(model, loaded.family, entry.plan, tokenizer=loaded.tokenizer)
        except TensoredgeError as exc:
            row["error"] = str(exc)
            say(f"[{i + 1}/{len(entries)}] {entry.plan}: not built ({exc})")
            done["rows"][json.dumps(entry.plan, sort_keys=True)] = row
        else:
            row["compress_seconds"] = round(time.time() - began, 2)
            row |= measure(loaded.model, model)
            pending[str(i)] = model
        rows.append(row)
        if len(pending) == group:
            evaluate()
    evaluate()
    if done.get("reference") is None:
        done["reference"] = compare(loaded.model, {}, windows)["reference"]
    return {**key, "dataset": "wikitext-2 test", "reference": done["reference"], "machine": machine(), "rows": rows}


def read_partial(path: Path, key: dict) -> dict:
    """Rows finished by an earlier run with the same model and evaluation window, by plan."""
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data
    return {"key": key, "reference": None, "rows": {}}


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
