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
                group: int = 3) -> dict:
    """Compress and evaluate every entry (`entries_for(dense model)`) on WikiText-2 test of `args.model`;
    `group` candidates share one reference pass.

    An entry whose plan is infeasible (a TensoredgeError while compressing) is kept with its error.
    """
    from toolkit.checkpoint import open_model
    from toolkit.commands import evaluation_windows
    from toolkit.compress import compress_
    from toolkit.evaluate import compare

    loaded = open_model(args.model)
    windows, setup = evaluation_windows(loaded, args)
    entries = entries_for(loaded.model)
    say(f"sweep of {len(entries)} plans on {loaded.name}, {setup['tokens']} WikiText-2 test tokens each")
    rows: list[dict] = []
    reference: dict | None = None
    for start in range(0, len(entries), group):
        built: dict[str, nn.Module] = {}
        for i, entry in enumerate(entries[start:start + group], start):
            row = {"plan": entry.plan, **entry.labels}
            model = copy.deepcopy(loaded.model)
            began = time.time()
            try:
                compress_(model, loaded.family, entry.plan, tokenizer=loaded.tokenizer)
            except TensoredgeError as exc:
                row["error"] = str(exc)
                say(f"[{i + 1}/{len(entries)}] {entry.plan}: not built ({exc})")
            else:
                row["compress_seconds"] = round(time.time() - began, 2)
                row |= measure(loaded.model, model)
                built[str(i)] = model
            rows.append(row)
        if built:
            say(f"evaluating plans {start + 1}..{start + len(built)} of {len(entries)}")
            scores = compare(loaded.model, built, windows)
            reference = scores["reference"]
            for key in built:
                rows[int(key)] |= scores[key]
    if reference is None:
        reference = compare(loaded.model, {}, windows)["reference"]
    return {"model": loaded.name, "family": loaded.family, "dataset": "wikitext-2 test", **setup,
            "reference": reference, "machine": machine(), "rows": rows}


def machine() -> dict:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def write_outputs(stem: Path, result: dict, markdown: str, plot: Callable[[Path], None]) -> list[Path]:
    """`stem`.json, `stem`.md and `stem`.png, each written under a temporary name and renamed."""
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown)
    with atomic_path(paths[2]) as tmp:
        plot(tmp)
    return paths


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
