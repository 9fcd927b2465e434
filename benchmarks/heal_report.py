"""Tables and curves for docs/healing.md from what benchmarks/gpu_heal.sh brought back.

    python benchmarks/heal_report.py RESULTS/heal-results.tar.gz [--doc docs/healing.md] [--gpu "NVIDIA H200"]

Reads the tarball (or a folder it was unpacked into): each run's heal.json and options, and the
eval JSON of the dense model, every plan unhealed and every healed model on the full WikiText-2
test set and the full second held-out text. Writes docs/healing-results.json, one PNG of held-out
perplexity against tokens seen per text (docs/healing-curves-<text>.png), and replaces the part of
docs/healing.md between `<!-- results:begin -->` and `<!-- results:end -->` with the tables.
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


def score(logs: Path, name: str, text: str) -> dict | None:
    result = load(logs / f"eval-{name}-{text}.json")
    return None if result is None else {**result["scores"]["model"], "tokens": result["scores"]["model"]["tokens"]}


def collect(root: Path) -> dict:
    """Every run's settings, training record and full-text scores."""
    logs = root / "logs"
    dense = {text: score(logs, "dense", text) for text in TEXTS}
    runs, plans = [], {}
    for options in sorted(logs.glob("heal-plan*-heal*.options")):
        name = options.name.removesuffix(".options")[len("heal-"):]
        plan_name = name.split("-")[0]
        plan_text, _, heal_text = options.read_text().strip().partition(" | ")
        heal = load(root / name / "heal.json")
        plans[plan_name] = {"plan": plan_text.split(": ", 1)[-1],
                            "scores": {text: score(logs, plan_name, text) for text in TEXTS}}
        training = (heal or {}).get("training", {})
        runs.append({"run": name, "plan": plan_name, "options": " ".join(heal_text.split()),
                     "quant": (heal or {}).get("quant"), "data": (heal or {}).get("data"),
                     "steps": training.get("steps_done"), "steps_planned": (heal or {}).get("config", {}).get("steps"),
                     "tokens_seen": training.get("tokens_seen"), "train_seconds": training.get("train_seconds"),
                     "curves": training.get("curves", []),
                     "scores": {text: score(logs, name, text) for text in TEXTS}})
    return {"dense": dense, "plans": plans, "runs": runs}


def fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def rise(score: dict | None, dense: dict | None) -> str:
    if not score or not dense:
        return "-"
    return f"{100 * (score['perplexity'] / dense['perplexity'] - 1):+.1f}%"


def tables(summary: dict, gpu: str | None) -> str:
    dense = summary["dense"]
    lines = []
    tokens = ", ".join(f"{TEXTS[t]} {dense[t]['tokens']:,} tokens" for t in TEXTS if dense.get(t))
    lines.append(f"Perplexity on the full held-out texts ({tokens}; windows of 1024 every 512), "
                 f"dense SmolLM2-135M: " + ", ".join(f"{TEXTS[t]} {fmt(dense[t]['perplexity'])}" for t in TEXTS
                                                    if dense.get(t)) + (f". GPU: {gpu}." if gpu else "."))
    lines.append("")
    head = ["plan", "healing", "steps", "tokens seen"]
    for t in TEXTS:
        head += [f"{TEXTS[t]}: unhealed", "healed", "vs dense", "KL"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for run in summary["runs"]:
        plan = summary["plans"][run["plan"]]
        row = [plan["plan"], run["options"] or "(defaults)", f"{run['steps'] or 0:,} / {run['steps_planned'] or 0:,}",
               fmt(run["tokens_seen"] and run["tokens_seen"] / 1e6, 1) + "M"]
        for t in TEXTS:
            healed, unhealed = run["scores"][t], plan["scores"][t]
            row += [fmt(unhealed and unhealed["perplexity"]), fmt(healed and healed["perplexity"]),
                    rise(healed, dense.get(t)), fmt(healed and healed.get("kl"), 3)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(summary: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for text, title in TEXTS.items():
        fig, ax = plt.subplots(figsize=(8, 5))
        teacher = None
        for run in summary["runs"]:
            points = [c for c in run["curves"] if text in c]
            if not points:
                continue
            teacher = points[0][text]["teacher_perplexity"]
            ax.plot([p["tokens_seen"] / 1e6 for p in points], [p[text]["perplexity"] for p in points],
                    marker=".", label=f"{summary['plans'][run['plan']]['plan']} | {run['options'] or 'defaults'}")
        if teacher is None:
            plt.close(fig)
            continue
        ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="dense (teacher)")
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel("perplexity (held-out slice)")
        ax.set_yscale("log")
        ax.set_title(f"Healing: held-out perplexity on {title} against tokens seen")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        path = out_dir / f"healing-curves-{text}.png"
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
    args = parser.parse_args()
    summary = collect(unpack(args.results))
    out_dir = args.doc.parent
    (out_dir / "healing-results.json").write_text(json.dumps(summary, indent=2) + "\n")
    pictures = plot(summary, out_dir)
    section = tables(summary, args.gpu) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pictures)
    doc = args.doc.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{args.doc} has no {BEGIN} ... {END} section to fill")
    doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: f"{BEGIN}\n{section}\n{END}", doc, flags=re.S)
    args.doc.write_text(doc)
    print(f"wrote {args.doc}, {out_dir / 'healing-results.json'} and {len(pictures)} plot(s)")


if __name__ == "__main__":
    main()
