"""Reports: the pipeline's summary table, and a Markdown page with plots from any set of result files."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path
from toolkit.table import markdown_table, mib, num

SUMMARY_HEADERS = ["model", "params", "ONNX file", "GGUF file", "perplexity", "KL", "top-1",
                   "ONNX tok/s", "GGUF tok/s", "ONNX peak RSS", "GGUF peak RSS", "front"]
RUN_HEADERS = ["file", "format", "runtime", "threads", "size", "decode tok/s", "decode min–max",
               "prefill tok/s", "peak RSS", "perplexity", "J/token", "emulated"]
PIPELINE_SCHEMA = "tensoredge.pipeline/1"
BENCH_SET_SCHEMA = "tensoredge.bench-set/1"  # many bench rows in one file: {"schema", "runs": [bench, ...], ...}


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """One row per variant (dense, compressed) of a pipeline summary; `front` names its files that
    no other file of the run beats on both size and perplexity."""
    files = summary_files(summary)
    on_front = {(files[i][0], files[i][1]) for i in pareto_front([(f[2], f[3]) for f in files])}
    rows = []
    for name, v in summary["variants"].items():
        onnx, gguf, scores = v["onnx"], v["gguf"], v["scores"]

        def size(fmt: dict, suffix: str = "") -> str:
            return "refused†" if "refused" in fmt else f"{mib(fmt['export']['file_bytes'])}{suffix}"

        def bench(fmt: dict, key: str) -> str:
            if "refused" in fmt:
                return "-"
            value = fmt["bench"][key]
            return f"{value['median']:.1f}" if key == "decode_tokens_per_s" else mib(value)

        rows.append([
            name,
            f"{v['parameters']['total']['params'] / 1e6:.1f}M",
            size(onnx),
            size(gguf, f" {gguf.get('export', {}).get('weight_type', '')}"),
            num(scores["perplexity"], 4),
            num(scores.get("kl"), 3),
            num(scores.get("top1_agreement"), 3),
            bench(onnx, "decode_tokens_per_s"),
            bench(gguf, "decode_tokens_per_s"),
            bench(onnx, "peak_rss_sampled_bytes"),
            bench(gguf, "peak_rss_sampled_bytes"),
            ", ".join(fmt.upper() for fmt in ("onnx", "gguf") if (name, fmt) in on_front) or "-",
        ])
    return SUMMARY_HEADERS, rows


def summary_files(summary: dict) -> list[tuple[str, str, int, float]]:
    """(variant, format, file bytes, perplexity) of every file a pipeline run wrote."""
    return [(name, fmt, v[fmt]["export"]["file_bytes"], v["scores"]["perplexity"])
            for name, v in summary["variants"].items() for fmt in ("onnx", "gguf") if "export" in v[fmt]]


def front_verdict(summary: dict) -> list[str]:
    """One line per compressed file: on the size x perplexity front, or which dense file beats it."""
    files = summary_files(summary)
    front = set(pareto_front([(f[2], f[3]) for f in files]))

    def label(f: tuple) -> str:
        kind = summary["variants"][f[0]]["gguf"]["export"]["weight_type"] if f[1] == "gguf" else \
            "+".join(summary["variants"][f[0]]["onnx"]["export"]["files"])
        return f"{f[0]} {f[1].upper()} {kind} ({mib(f[2])}, perplexity {f[3]:.2f})"

    lines = []
    for i, f in enumerate(files):
        if f[0] == "dense":
            continue
        if i in front:
            lines.append(f"{label(f)} is on the size x perplexity front.")
            continue
        best = min((g for g in files if g[2] <= f[2] and g[3] <= f[3] and g != f), key=lambda g: g[2])
        smaller = f"{mib(f[2] - best[2])} smaller" if best[2] < f[2] else "the same size"
        better = f"{1 - best[3] / f[3]:.1%} lower perplexity" if best[3] < f[3] else "the same perplexity"
        lines.append(f"{label(f)} is beaten by {label(best)}: {smaller}, {better}.")
    return lines


def footnotes(summary: dict) -> list[str]:
    e, m = summary["evaluation"], summary["machine"]
    bench = next(v[f]["bench"] for v in summary["variants"].values() for f in ("onnx", "gguf") if "bench" in v[f])
    refused = [f"†{name} {fmt.upper()}: {v[fmt]['refused']}" for name, v in summary["variants"].items()
               for fmt in ("onnx", "gguf") if "refused" in v[fmt]]
    subset = "a subset" if e["tokens"] < e["split_tokens"] else "all"
    return [
        f"Perplexity, KL (dense || compressed, nats/token) and top-1 agreement: {subset} of WikiText-2 test, "
        f"{e['tokens']:,} of {e['split_tokens']:,} tokens, {e['windows']} windows of {e['context']} "
        f"tokens every {e['stride']}, PyTorch float32.",
        f"Benches: {bench['prompt_tokens']}-token random prompt, {bench['decode_tokens']} greedy decode steps, "
        f"median of {bench['repeats']} runs after {bench['warmup']} warm-up, {bench['threads']} threads.",
        "ONNX decode uses the export's KV cache; ONNX keeps the factors.",
        *[f"{line} (the export failed its own check against PyTorch)" for line in refused],
        "GGUF files hold dense (materialised) weights: llama.cpp cannot run factorized layers.",
        "front: the files no other file here beats on both size and perplexity (each variant's perplexity is its "
        "PyTorch float32 model's; the quantized files' own is not measured here).",
        *budget_note(summary.get("fc_budget")),
        f"Machine: {m.get('cpu_model')}, {m.get('cores_physical')} physical / {m.get('cores_logical')} logical "
        f"cores, {mib(m.get('memory_total_bytes'))}; {m.get('os')}.",
    ]


def budget_note(allocation: dict | None) -> list[str]:
    """How a budgeted compression (--fc ... --max-ppl-increase or --remove) came out."""
    if not allocation:
        return []
    note = (f"{allocation['method']} with {allocation['allocation']} ranks: {allocation['removed_of_fc']:.1%} of the "
            f"MLP + attention parameters removed")
    if allocation.get("max_ppl_increase") is not None:
        note += (f", the largest removal found within +{allocation['max_ppl_increase']:.0%} perplexity on held-out "
                 f"WikiText-2 valid ({allocation['valid_perplexity_dense']:.2f} -> "
                 f"{allocation['valid_perplexity']:.2f})")
    return [note + ", training-free."]


def summary_markdown(summary: dict) -> str:
    headers, rows = summary_rows(summary)
    args = summary["arguments"]
    command = summary.get("command") or f"tensoredge pipeline --model {args['model']}" + "".join(
        f" --{k} {v}" for k, v in summary["plan"].items() if k in ("embedding", "mlp", "attention"))
    lines = [
        f"# tensoredge pipeline: {summary['model']}",
        "",
        f"Command: `{command}` ({summary['timestamp']}, "
        f"{summary['seconds']:.0f} s)",
        "",
        f"Weights: {summary['source']}. Plan: {summary['plan']}.",
        "",
        markdown_table(headers, rows),
        "",
        *[f"- **{line}**" for line in front_verdict(summary)],
        "",
        *[f"- {note}" for note in footnotes(summary)],
        "",
    ]
    return "\n".join(lines)


@dataclass
class Run:
    """One bench result, flattened for the runs table and the plots."""

    path: str
    format: str
    runtime: str
    threads: int
    size: int
    decode: dict  # tok/s: median, min, max
    prefill: float
    peak_rss: int | None
    machine: dict
    energy: dict | None
    meters_skipped: list[str]  # "meter: why" for each energy meter the bench could not use
    emulated: str | None  # the board profile a host run was held to (--emulate)
    emulator: str | None = None  # e.g. "qemu-aarch64": the run's timings are an emulator's, never shown
    perplexity: float | None = None


def skipped_meters(value: object) -> list[str]:
    """device_bench's "energy_skipped" (a list of {"meter", "why"}, or one reason) as "meter: why" lines."""
    if isinstance(value, list):
        return [f"{s['meter']}: {s['why']}" if isinstance(s, dict) else str(s) for s in value]
    return [str(value)] if value else []


def runtime_label(bench: dict) -> str:
    """Runtime, version and device; with a decode path, dtype and batch size where the bench has them."""
    rt = bench["runtime"]
    label = f"{rt['name']} {rt['version']}" + (f" on {rt['device']}" if rt.get("device", "cpu") != "cpu" else "")
    setup = [str(rt[k]) for k in ("path", "dtype") if rt.get(k)]
    if bench.get("batch_size"):
        setup.append(f"batch {bench['batch_size']}")
    return f"{label}, {' '.join(setup)}" if setup else label


def run_of(bench: dict) -> Run:
    """Read a `tensoredge.bench/1` dict; energy, emulation and RSS are optional."""
    return Run(
        path=bench["model_path"],
        format=bench["format"],
        runtime=runtime_label(bench),
        threads=bench["threads"],
        size=bench["model_bytes"],
        decode={k: float(bench["decode_tokens_per_s"][k]) for k in ("median", "min", "max")},
        prefill=float(bench["prefill_tokens_per_s"]["median"]),
        peak_rss=bench.get("peak_rss_sampled_bytes"),
        machine=bench.get("machine") or {},
        energy=bench.get("energy"),
        meters_skipped=skipped_meters(bench.get("energy_skipped")),
        emulated=(bench.get("emulated") or {}).get("profile"),
        emulator=(bench.get("machine") or {}).get("emulated"),
    )


@dataclass
class Inputs:
    """Everything read from the result files."""

    runs: dict[str, Run]  # keyed by the bench's content: a bench met twice (file and summary) is one run
    eval_rows: list[list[str]]
    eval_perplexity: dict[str, float]  # evaluated model name -> perplexity
    pipeline_sections: list[str]


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TensoredgeError(f"cannot read results file {path}: {exc}") from None


def kind_of(data: object) -> str | None:
    """"bench", "bench-set", "pipeline" or "eval" (eval JSON has no schema key), or None."""
    from device_bench.bench import SCHEMA as BENCH_SCHEMA

    if not isinstance(data, dict):
        return None
    schema = data.get("schema")
    kinds = {BENCH_SCHEMA: "bench", PIPELINE_SCHEMA: "pipeline", BENCH_SET_SCHEMA: "bench-set"}
    if schema in kinds:
        return kinds[schema]
    return "eval" if schema is None and {"model", "dataset", "scores"} <= data.keys() else None


def add_run(inputs: Inputs, bench: dict, perplexity: float | None = None) -> None:
    run = inputs.runs.setdefault(json.dumps(bench, sort_keys=True), run_of(bench))
    if perplexity is not None:
        run.perplexity = perplexity


def add_eval(inputs: Inputs, path: Path, data: dict) -> None:
    """A table row per scored model; perplexities by model name (a .gguf file's name is its file name)."""
    for role, s in data["scores"].items():
        name = data["model"] if role == "model" else s.get("name", role)
        inputs.eval_perplexity[name] = s["perplexity"]
        inputs.eval_rows.append([path.name, name, str(data["tokens"]), num(s["perplexity"], 5),
                                 num(s.get("kl"), 3), num(s.get("top1_agreement"), 3)])


def add_file(inputs: Inputs, kind: str, path: Path, data: dict) -> None:
    if kind == "bench":
        add_run(inputs, data)
    elif kind == "bench-set":
        for bench in data["runs"]:
            add_run(inputs, bench)
    elif kind == "pipeline":
        inputs.pipeline_sections.append("#" + summary_markdown(data))  # one heading level down
        for variant in data["variants"].values():
            for fmt in ("onnx", "gguf"):
                if "bench" in variant[fmt]:  # a refused export has no bench
                    add_run(inputs, variant[fmt]["bench"], variant["scores"]["perplexity"])
    else:
        add_eval(inputs, path, data)


def read_inputs(paths: Sequence[Path]) -> Inputs:
    """Read and check every file before anything is written; join eval perplexities to runs by file name."""
    inputs = Inputs({}, [], {}, [])
    for path in paths:
        data = read_json(path)
        kind = kind_of(data)
        if kind is None:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise TensoredgeError(f"{path} is not a bench, bench set, pipeline or eval result (schema {schema!r})")
        try:
            add_file(inputs, kind, path, data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise TensoredgeError(f"{path} is not a complete {kind} result ({type(exc).__name__}: {exc})") from None
    for run in inputs.runs.values():
        if run.perplexity is None:
            run.perplexity = inputs.eval_perplexity.get(Path(run.path).name)
    return inputs


def pareto_front(points: Sequence[tuple[float, float]], maximize: bool = False) -> list[int]:
    """Indices of the (size, metric) points that no other point dominates.

    A point dominates another when it is no larger, no worse, and differs; equal points all stay.
    The metric is better lower, or higher with `maximize`.
    """
    sign = -1 if maximize else 1
    keyed = [(x, sign * y) for x, y in points]
    return [i for i, p in enumerate(keyed)
            if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in keyed)]


def file_labels(runs: Sequence[Run]) -> list[str]:
    """Each run's file name, with its folder where two different files share a name."""
    paths_by_name = defaultdict(set)
    for run in runs:
        paths_by_name[Path(run.path).name].add(run.path)
    return [(p.name if len(paths_by_name[p.name]) == 1 else f"{p.parent.name}/{p.name}")
            for p in (Path(run.path) for run in runs)]


def machine_name(m: dict) -> str:
    """Board or CPU, core count and host name: VMs often share a host name, rarely all three."""
    base = m.get("board") or m.get("cpu_model") or "unknown machine"
    base += f", {m['cores_logical']} cores" if m.get("cores_logical") else ""
    return f"{base} ({m['hostname']})" if m.get("hostname") else base


def machine_line(m: dict) -> str:
    cores = f"{m.get('cores_physical')} physical / {m.get('cores_logical')} logical cores"
    memory = f"{mib(m.get('memory_total_bytes'))} RAM"
    parts = [m.get("board"), m.get("cpu_model"), cores, memory, m.get("os"), m.get("arch")]
    return f"`{m.get('hostname')}`: " + ", ".join(str(x) for x in parts if x)


def machines_of(runs: Sequence[Run]) -> dict[str, dict]:
    """Distinct machines by name, in order of first appearance."""
    machines: dict[str, dict] = {}
    for run in runs:
        machines.setdefault(machine_name(run.machine), run.machine)
    return machines


def energy_cell(run: Run) -> str:
    """J/token with how it was obtained: measured or estimated, the meter, and above idle where known."""
    e = run.energy or {}
    if e.get("joules_per_token") is None:
        return "-"
    how = ", ".join(str(e[k]) for k in ("kind", "meter") if e.get(k))
    if e.get("joules_per_token_above_idle") is not None:
        how += f"; {num(e['joules_per_token_above_idle'])} above idle"
    return f"{num(e['joules_per_token'])} ({how})" if how else num(e["joules_per_token"])


def best_per_batch(benches: Sequence[dict]) -> dict[tuple[str, int], dict]:
    """For each (variant, batch size), the bench with the lowest whole-board J/token: a GPU's best
    configuration at that batch, for an energy plot. Benches whose parity check (a fast decode path
    against eager) did not pass, and benches without energy, are left out."""
    best: dict[tuple[str, int], dict] = {}
    for bench in benches:
        joules = (bench.get("energy") or {}).get("joules_per_token")
        parity = bench.get("parity")
        if joules is None or (parity is not None and not parity.get("passed")):
            continue
        key = (str(bench.get("variant", bench["model_path"])), int(bench.get("batch_size", 1)))
        if key not in best or joules < best[key]["energy"]["joules_per_token"]:
            best[key] = bench
    return dict(sorted(best.items()))


def run_row(run: Run, label: str) -> list[str]:
    d = run.decode
    emulated = ", ".join(x for x in (run.emulated, run.emulator) if x) or "-"
    if run.emulator:  # it ran, but its timings, memory and energy are the emulator's: none is shown
        return [label, run.format, run.runtime, str(run.threads), mib(run.size), "not timed†", "-", "-", "-",
                num(run.perplexity, 5), "-", emulated]
    return [label, run.format, run.runtime, str(run.threads), mib(run.size), f"{d['median']:.1f}",
            f"{d['min']:.1f}–{d['max']:.1f}", f"{run.prefill:.1f}", mib(run.peak_rss), num(run.perplexity, 5),
            energy_cell(run), emulated]


class Point(NamedTuple):
    x: float  # file size, MiB
    y: float
    label: str
    fmt: str
    hollow: bool = False  # an estimate, not a measurement
    spread: tuple[float, float] | None = None  # (low, high) of y


def perplexity_point(run: Run, label: str) -> Point | None:
    return None if run.perplexity is None else Point(run.size / 2**20, run.perplexity, label, run.format)


def speed_point(run: Run, label: str) -> Point | None:
    if run.emulator:
        return None
    d = run.decode
    return Point(run.size / 2**20, d["median"], label, run.format, spread=(d["min"], d["max"]))


def energy_point(run: Run, label: str) -> Point | None:
    e = run.energy or {}
    if e.get("joules_per_token") is None or run.emulator:
        return None
    return Point(run.size / 2**20, e["joules_per_token"], label, run.format, hollow=e.get("kind") == "estimated")


@dataclass(frozen=True)
class Plot:
    file: str
    title: str
    ylabel: str
    point: Callable[[Run, str], Point | None]
    maximize: bool  # is a higher metric better?
    absent: str  # why there is no plot, when no run has the metric
    log_y: bool = False


PLOTS = (
    Plot("size_vs_perplexity.png", "Perplexity vs model file size", "perplexity, WikiText-2 test (log scale)",
         perplexity_point, False, log_y=True,
         absent="none of the runs has a perplexity. Perplexity comes with the benches inside a pipeline summary "
                "(`summary.json`), or from `tensoredge eval --model FILE --json` of a file with the bench's name."),
    Plot("toks_vs_size.png", "Decode speed vs model file size", "decode tokens/s (median, bar: min–max)",
         speed_point, True, absent="there are no natively timed bench runs in the inputs (emulated runs are not timed)."),
    Plot("joules_vs_size.png", "Energy per token vs model file size", "energy per token (J/token)",
         energy_point, False,
         absent="none of the runs has an energy reading (J/token)."),
)


def draw(plot: Plot, points: Sequence[Point], machines: str, path: Path) -> None:
    """Scatter with labels, spread bars, hollow estimates and the Pareto front; PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = {fmt: f"C{i}" for i, fmt in enumerate(sorted({p.fmt for p in points}))}
    for fmt, hollow in sorted({(p.fmt, p.hollow) for p in points}):
        group = [p for p in points if (p.fmt, p.hollow) == (fmt, hollow)]
        ax.scatter([p.x for p in group], [p.y for p in group], s=45, zorder=3, edgecolors=colors[fmt],
                   facecolors="none" if hollow else colors[fmt], label=f"{fmt} (estimate)" if hollow else fmt)
    for p in points:
        if p.spread:
            ax.errorbar(p.x, p.y, yerr=[[p.y - p.spread[0]], [p.spread[1] - p.y]], fmt="none",
                        ecolor=colors[p.fmt], alpha=0.6, capsize=3)
    front = sorted((points[i] for i in pareto_front([(p.x, p.y) for p in points], plot.maximize)),
                   key=lambda p: p.x)
    ax.step([p.x for p in front], [p.y for p in front], where="post", color="black", linestyle="--",
            linewidth=1, zorder=2, label="Pareto front (smaller and better)")
    ax.scatter([p.x for p in front], [p.y for p in front], s=180, facecolors="none", edgecolors="black", zorder=2)
    if plot.log_y:
        ax.set_yscale("log")
    ax.set(xlabel="model file size (MiB)", ylabel=plot.ylabel, title=f"{plot.title}\n{machines}")
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    place_labels(ax, points)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")


LABEL_OFFSETS = [(6, 5, "left"), (6, -13, "left"), (-6, 5, "right"), (-6, -13, "right"), (6, 16, "left"),
                 (6, -24, "left")]  # points from the marker, and text alignment


def place_labels(ax, points: Sequence[Point]) -> None:
    """Label each point at the first offset whose text overlaps no earlier label (else the last offset)."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for p in points:
        for dx, dy, ha in LABEL_OFFSETS:
            text = ax.annotate(p.label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points", ha=ha, fontsize=8)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy, ha) == LABEL_OFFSETS[-1]:
                break
            text.remove()
        placed.append(box)


def plot_section(plot: Plot, runs: Sequence[Run], labels: Sequence[str], machines: str, out_dir: Path) -> list[str]:
    """Draw `plot` if any run has its metric; the Markdown that shows it or says why it is absent."""
    points = [p for run, label in zip(runs, labels) if (p := plot.point(run, label)) is not None]
    if not points:
        return [f"### {plot.title}", "", f"No plot: {plot.absent}", ""]
    draw(plot, points, machines, out_dir / plot.file)
    return [f"### {plot.title}", "", f"![{plot.title}]({plot.file})", ""]


RUN_NOTES = [
    "Size: the model file on disk. Decode and prefill tok/s: median of the bench's repeats; min–max is their "
    "spread. Peak RSS: sampled during the bench.",
    "Perplexity: WikiText-2 test, joined to a run when a pipeline summary contains that bench (measured in "
    "PyTorch float32 before export, so a quantized GGUF shows its variant's number), else from "
    "`tensoredge eval --json` of a model file with the same name.",
    "J/token: energy of the bench's measured runs per token (prompt and decoded, as device_bench counts them), "
    "measured by the named meter or estimated; with a batch, the tokens of every stream. Above idle: less the "
    "device's idle power over the same time (GPU rows, NVML).",
    "Pareto front (dashed line, ringed points): runs that no other run beats on both file size and the metric.",
]


def energy_notes(runs: Sequence[Run]) -> list[str]:
    """Where the estimates come from, and each energy meter a bench could not use, and why."""
    sources = dict.fromkeys(str(r.energy["source"]) for r in runs
                            if r.energy and r.energy.get("kind") == "estimated" and r.energy.get("source"))
    skipped = dict.fromkeys(line for run in runs for line in run.meters_skipped)
    return ([f"- Energy estimates: {'; '.join(sources)}."] if sources else []) + (
        [f"- Energy meters not available: {'; '.join(skipped)}."] if skipped else [])


def emulator_notes(runs: Sequence[Run]) -> list[str]:
    """Why runs under an emulator show no speed."""
    emulators = dict.fromkeys(r.emulator for r in runs if r.emulator)
    if not emulators:
        return []
    return [f"- †Ran under {', '.join(emulators)} (a foreign architecture emulated on this host): the run "
            "checks that the model loads and decodes there, but its timings, memory and energy are the "
            "emulator's, not a board's, so no speed, peak RSS, J/token or plot point is shown for it."]


def report_markdown(inputs: Inputs, paths: Sequence[Path], plots: list[str]) -> str:
    runs = list(inputs.runs.values())
    machines = machines_of(runs)
    headers, rows = RUN_HEADERS, [run_row(r, label) for r, label in zip(runs, file_labels(runs))]
    if len(machines) > 1:
        headers = [*headers, "machine"]
        rows = [[*row, machine_name(r.machine)] for row, r in zip(rows, runs)]
    lines = [
        "# tensoredge report",
        "",
        *[f"- Machine {machine_line(m)}" for m in machines.values()],
        "- Inputs: " + ", ".join(f"`{p}`" for p in paths),
        "",
        f"## Runs ({len(runs)})",
        "",
        markdown_table(headers, rows) if runs else "No bench runs in the inputs.",
        "",
        *[f"- {note}" for note in RUN_NOTES],
        *emulator_notes(runs),
        *energy_notes(runs),
        "",
        "## Plots",
        "",
        *plots,
    ]
    if inputs.eval_rows:
        headers = ["file", "model", "tokens", "perplexity", "KL", "top-1"]
        lines += ["## Evaluations", "", markdown_table(headers, inputs.eval_rows), ""]
    return "\n".join([*lines, *inputs.pipeline_sections])


def write_report(paths: Sequence[Path], out_dir: Path) -> Path:
    """report.md and PNG plots in `out_dir` from bench (tensoredge.bench/1, bench-set/1), pipeline and eval files."""
    inputs = read_inputs(paths)
    runs = list(inputs.runs.values())
    names = list(machines_of(runs))
    machines = ", ".join(names) if len(names) <= 2 else f"{len(names)} machines"
    labels = [f"{label} ({r.emulated})" if r.emulated else label for r, label in zip(runs, file_labels(runs))]
    with atomic_path(out_dir, directory=True, kind="report") as tmp:  # the whole folder, replaced at once
        plots = [line for plot in PLOTS for line in plot_section(plot, runs, labels, machines, tmp)]
        (tmp / "report.md").write_text(report_markdown(inputs, paths, plots))
    return Path(out_dir) / "report.md"
