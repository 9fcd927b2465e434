"""Tables and curves for docs/healing.md from what benchmarks/gpu_heal.sh brought back.

    python benchmarks/heal_report.py RESULTS/heal-results.tar.gz [--doc docs/healing.md] [--gpu "NVIDIA H200"]
        [--name SESSION]

Reads the tarball (or a folder it was unpacked into): each run's heal.json and options, and the
eval JSON of the dense model, every plan unhealed and every healed model on the full WikiText-2
test set and the full second held-out text. Writes docs/healing-results.json, one PNG of held-out
perplexity against tokens seen per text (docs/healing-curves-<text>.png), and replaces the part of
docs/healing.md between `<!-- results:begin -->` and `<!-- results:end -->` with the tables. With
--name S, one session among several: `<!-- results:S:begin -->`, healing-results-S.json and
healing-curves-S-<text>.png.
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
import tempfile
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TEXTS = {"wikitext2": "WikiText-2 test", "alice": "Alice in Wonderland"}


def unpack(source: Path) -> Path:
    """The folder holding logs/ and the run folders: `source` itself, or the tarball unpacked."""
    if source.is_dir():
        return source
    folder = Path(tempfile.mkdtemp(prefix="heal-report-"))
    with tarfile.open(source) as tar:
        tar.extractall(folder, filter="data")  # plain files only: no links, no paths outside
    return folder


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def score(logs: Path, name: str, text: str, quant: str = "") -> dict | None:
    """The model's scores in eval-<name>-<text>[-<quant>].json, with the evaluation's settings."""
    result = load(logs / f"eval-{name}-{text}{'-' + quant if quant else ''}.json")
    if result is None:
        return None
    return {**result["scores"]["model"], "text_tokens": result["tokens"], "all_tokens": result["split_tokens"],
            "context": result["context"],
            "stride": result["stride"], "model": result["model"]}


def read_options(path: Path) -> dict:
    """plan / common / heal lines written by gpu_heal.sh."""
    return dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
                for line in path.read_text().splitlines() if line.strip())


def collect(root: Path, quant: str) -> dict:
    """Every run's settings, training record and full-text scores."""
    logs = root / "logs"
    dense = {text: score(logs, "dense", text) for text in TEXTS}
    dense_quant = {text: score(logs, "dense", text, quant) for text in TEXTS}
    runs, plans = [], {}
    for options_path in sorted(logs.glob("heal-plan*-heal*.options")):
        name = options_path.name.removesuffix(".options")[len("heal-"):]
        plan_name = name.split("-")[0]
        options = read_options(options_path)
        heal = load(root / name / "heal.json") or {}
        plans[plan_name] = {"plan": options.get("plan", ""),
                            "scores": {text: score(logs, plan_name, text) for text in TEXTS},
                            "quantized": {text: score(logs, plan_name, text, quant) for text in TEXTS}}
        training = heal.get("training", {})
        runs.append({"run": name, "plan": plan_name, "common": options.get("common", ""),
                     "options": options.get("heal", "").strip(), "quant": heal.get("quant"), "data": heal.get("data"),
                     "steps": training.get("steps_done"), "steps_planned": heal.get("config", {}).get("steps"),
                     "tokens_seen": training.get("tokens_seen"), "train_seconds": training.get("train_seconds"),
                     "curves": training.get("curves", []),
                     "scores": {text: score(logs, name, text) for text in TEXTS},
                     "quantized": {text: score(logs, name, text, quant) for text in TEXTS}})
    return {"quant_eval": quant, "dense": dense, "dense_quantized": dense_quant, "plans": plans, "runs": runs}


def fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ppl(s: dict | None) -> float | None:
    return s and s["perplexity"]


def rise(s: dict | None, dense: dict | None) -> str:
    if not s or not dense:
        return "-"
    return f"{100 * (s['perplexity'] / dense['perplexity'] - 1):+.1f}%"


def tables(summary: dict, gpu: str | None) -> str:
    dense, dense_q, quant = summary["dense"], summary["dense_quantized"], summary["quant_eval"] or "quantized"
    # the simulated-quantization columns only where some model was scored so
    quantized = any(dense_q.values()) or any(v for r in summary["runs"] for v in r["quantized"].values())
    lines = []
    commons = sorted({r["common"] for r in summary["runs"]})
    if commons:
        lines.append("Options of every heal run: " + "; ".join(f"`{c}`" for c in commons) + ".")
    if gpu:
        lines.append(f"GPU: {gpu}.")
    for text, title in TEXTS.items():
        d = dense.get(text)
        if not d:
            continue
        amount = (f"all {d['text_tokens']:,} tokens" if d["text_tokens"] == d["all_tokens"]
                  else f"the first {d['text_tokens']:,} of {d['all_tokens']:,} tokens")
        lines += ["", f"**{title}**: {amount}, windows of {d['context']} every {d['stride']}. "
                  f"Dense: {fmt(ppl(d))}" + (f", {quant} weights (simulated): {fmt(ppl(dense_q.get(text)))} "
                                             f"({rise(dense_q.get(text), d)})" if dense_q.get(text) else "") + ".", ""]
        head = ["plan", "healing", "steps", "tokens seen", "unhealed", "healed", "vs dense", "KL"]
        head += [f"healed, {quant} (simulated)", "vs dense"] if quantized else []
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for run in summary["runs"]:
            plan = summary["plans"][run["plan"]]
            healed, healed_q = run["scores"][text], run["quantized"][text]
            cells = [f"`{plan['plan']}`", f"`{run['options']}`" if run["options"] else "(common options)",
                     f"{run['steps'] or 0:,} / {run['steps_planned'] or 0:,}",
                     f"{(run['tokens_seen'] or 0) / 1e6:,.1f}M", fmt(ppl(plan["scores"][text])), fmt(ppl(healed)),
                     rise(healed, d), fmt(healed and healed.get("kl"), 3)]
            cells += [fmt(ppl(healed_q)), rise(healed_q, d)] if quantized else []
            lines.append("| " + " | ".join(cells) + " |")
    if quantized:
        lines += ["", f"`{quant} (simulated)`: PyTorch with every MatMulNBits weight fake-quantized exactly as ONNX "
                  "Runtime quantizes it (`tensoredge eval --fake-quant`); activations stay float. For a run "
                  "healed with `--quant`, that is the precision it was trained for, and `healed` is its float weights."]
    return "\n".join(lines)


def curve_labels(summary: dict) -> tuple[str | None, list[str]]:
    """The plan every run shares (None if they differ) and each run's legend label: its healing options,
    prefixed by its plan only when the plans differ."""
    plans = {summary["plans"][run["plan"]]["plan"] for run in summary["runs"]}
    one_plan = plans.pop() if len(plans) == 1 else None
    labels = []
    for run in summary["runs"]:
        options = run["options"] or "common options"
        labels.append(options if one_plan else f"{summary['plans'][run['plan']]['plan']} | {options}")
    return one_plan, labels


def plot(summary: dict, out_dir: Path, stem: str = "healing-curves") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    one_plan, labels = curve_labels(summary)
    for text, title in TEXTS.items():
        fig, ax = plt.subplots(figsize=(8, 5))
        teacher = None
        for run, label in zip(summary["runs"], labels):
            points = [c for c in run["curves"] if text in c]
            if not points:
                continue
            teacher = points[0][text]["teacher_perplexity"]
            ax.plot([p["tokens_seen"] / 1e6 for p in points], [p[text]["perplexity"] for p in points],
                    marker=".", label=label)
        if teacher is None:
            plt.close(fig)
            continue
        ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="dense (teacher)")
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel("perplexity (held-out slice)")
        ax.set_yscale("log")
        ax.set_title(f"Healing: held-out perplexity on {title} against tokens seen"
                     + (f"\n{one_plan}" if one_plan else ""), fontsize=10 if one_plan else None)
        ax.legend(fontsize=7 if one_plan else 6)
        ax.grid(alpha=0.3)
        path = out_dir / f"{stem}-{text}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="heal-results.tar.gz or the folder it was unpacked into")
    parser.add_argument("--doc", type=Path, default=Path("docs/healing.md"))
    parser.add_argument("--gpu", help="the GPU the runs used, for the text (e.g. 'NVIDIA H200')")
    parser.add_argument("--quant", default="int4", help="QUANT_EVAL of the runs (default: %(default)s)")
    parser.add_argument("--name", help="the session's name, when the doc holds several")
    args = parser.parse_args()
    summary = collect(unpack(args.results), args.quant)
    out_dir, suffix = args.doc.parent, f"-{args.name}" if args.name else ""
    begin, end = (BEGIN, END) if not args.name else (f"<!-- results:{args.name}:begin -->",
                                                       f"<!-- results:{args.name}:end -->")
    results = out_dir / f"healing-results{suffix}.json"
    results.write_text(json.dumps(summary, indent=2) + "\n")
    pictures = plot(summary, out_dir, f"healing-curves{suffix}")
    section = tables(summary, args.gpu) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pictures)
    doc = args.doc.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{args.doc} has no {begin} ... {end} section to fill")
    doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: f"{begin}\n{section}\n{end}", doc, flags=re.S)
    args.doc.write_text(doc)
    print(f"wrote {args.doc}, {results} and {len(pictures)} plot(s)")


if __name__ == "__main__":
    main()
