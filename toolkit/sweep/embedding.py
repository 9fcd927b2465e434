"""`tensoredge sweep embedding`: compression ratio vs perplexity and KL for each embedding variant
(per-token TT as in TensorGPT, TT with frequency- or norm-ranked tiers, TT-matrix with shared cores,
truncated SVD of the table, and frequency tiers of truncated SVDs with the most frequent rows exact),
then the tied-head policies side by side at a few ratios."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch.nn as nn

from toolkit.compress.shared_head import head_costs, stored_bytes
from toolkit.compress.tt_embedding import row_params, tensor_shape
from toolkit.files import atomic_path
from toolkit.sweep import Entry, new_figure, partial_path, run_entries, write_outputs
from toolkit.sweep.heal import HealSettings
from toolkit.table import markdown_table, num

RATIOS = (2.0, 3.31, 5.0, 10.0, 20.0, 38.4)
HEAD_RATIOS = (2.0,)
VARIANTS = {  # label -> spec at a ratio (without head=)
    "tt": "tt:ratio={r}{order}",
    "tt tiers by freq": "tt:ratio={r},tiers=2,by=freq{order}",
    "tt tiers by norm": "tt:ratio={r},tiers=2,by=norm{order}",
    "ttm": "ttm:ratio={r}",
    "svd-table": "svd-table:ratio={r}",
    "svd tiers by freq": "svd-tiered:ratio={r}",
}
HEAD_VARIANTS = ("tt", "tt tiers by freq", "ttm", "svd-table", "svd tiers by freq")
PAPER = [  # published figures, GPT-2 pretrained: not reproduced here
    ["TensorGPT (v1), per-token TT", "GPT-2", "38.40x", "largest embedding compression reported"],
    ["TensorGPT (v1), per-token TT", "GPT-2", "3.31x", "reported better than the original model"],
    ["TensorSLM (v2), per-token TT", "GPT-2 / SLMs", "about 2x", "reported comparable to the original"],
]


def tt_order(dim: int, ratio: float) -> str:
    """`,order=N` for the lowest order (3..5) whose rank-1 rows fit the ratio, '' for order 3."""
    for order in (3, 4, 5):
        shape = tensor_shape(dim, order)
        if row_params(shape, [1] * (order - 1)) < dim / ratio - 0.25:
            return "" if order == 3 else f",order={order}"
    return ""


def entries(dim: int, ratios: list[float], head_ratios: list[float], chosen: list[str] | None = None) -> list[Entry]:
    """The main table (head=dense, the embedding alone compressed) then the head-policy table; `chosen`:
    only these variants (labels of VARIANTS)."""
    out = []
    for r in ratios:
        for variant, pattern in VARIANTS.items():
            if chosen and variant not in chosen:
                continue
            spec = pattern.format(r=f"{r:g}", order=tt_order(dim, r)) + ",head=dense"
            out.append(Entry({"embedding": spec}, {"table": "variants", "variant": variant, "target": r,
                                                   "head": "dense"}))
    for r in head_ratios:
        for variant in HEAD_VARIANTS:
            if chosen and variant not in chosen:
                continue
            for head in ("shared", "lowrank"):
                spec = VARIANTS[variant].format(r=f"{r:g}", order=tt_order(dim, r)) + f",head={head}"
                out.append(Entry({"embedding": spec}, {"table": "heads", "variant": variant, "target": r,
                                                       "head": head}))
    return out


def measure(dense: nn.Module, model: nn.Module) -> dict:
    """Embedding bytes and achieved ratio; what the head stores, reads and computes per token."""
    before = dense.get_input_embeddings()
    embedding = model.get_input_embeddings()
    return {"embedding_bytes": stored_bytes(embedding), "ratio": stored_bytes(before) / stored_bytes(embedding),
            "record": getattr(embedding, "record", {}), "head_cost": head_costs(model, embedding)}


def shape_of(record: dict) -> str:
    if record.get("method") == "tt":
        return f"{'x'.join(map(str, record['tensor_shape']))} r={record['ranks']}"
    if record.get("method") == "tt-tiered":
        tiers = record["tiers"]
        return (f"{'x'.join(map(str, record['tensor_shape']))} {tiers[0]['count']} rows r={tiers[0]['ranks']}, "
                f"{tiers[1]['count']} r={tiers[1]['ranks']}")
    if record.get("method") == "ttm":
        return f"({'x'.join(map(str, record['vocab_shape']))})x({'x'.join(map(str, record['dim_shape']))}) r={record['ranks']}"
    if record.get("method") == "svd-table":
        return f"r={record['rank']}"
    if record.get("method") == "svd-tiered":
        return f"{record['exact']} rows exact, " + ", ".join(f"{t['count']} r={t['rank']}" for t in record["tiers"])
    return "-"


def variants_table(rows: list[dict]) -> str:
    healed = any("unhealed" in r for r in rows)
    body = [[r["variant"], f"{r['target']:g}", f"{r['ratio']:.2f}x" if "ratio" in r else "-",
             shape_of(r.get("record", {}))] + ([unhealed(r)] if healed else [])
            + [num(r.get("perplexity"), 5), num(r.get("kl"), 3),
               num(r.get("top1_agreement"), 3), r.get("error") or r.get("failed", "")]
            for r in rows if r["table"] == "variants"]
    return markdown_table(["variant", "target", "achieved (bytes)", "shape / ranks"]
                          + (["unhealed", "healed perplexity"] if healed else ["perplexity"])
                          + ["KL", "top-1", "note"], body)


def unhealed(row: dict) -> str:
    """The entry's perplexity before healing ('-' when it was not healed)."""
    return num(row["unhealed"]["perplexity"], 5) if "unhealed" in row else "-"


def heads_table(rows: list[dict]) -> str:
    chosen = [r for r in rows if r["table"] == "heads"
              or (r["table"] == "variants" and r["variant"] in HEAD_VARIANTS
                  and r["target"] in {h["target"] for h in rows if h["table"] == "heads"})]
    chosen.sort(key=lambda r: (r["target"], list(VARIANTS).index(r["variant"]), r["head"]))
    healed = any("unhealed" in r for r in chosen)
    body = []
    for r in chosen:
        cost = r.get("head_cost")
        stored = r["embedding_bytes"] + cost["head_bytes"] if cost else None
        body.append([r["variant"], f"{r['target']:g}", r["head"], cost["policy"] if cost else "-",
                     f"{stored / 2**20:.1f}" if cost else "-",
                     f"{cost['bytes_read'] / 2**20:.1f}" if cost else "-",
                     f"{cost['flops'] / 1e6:.1f}" if cost else "-"] + ([unhealed(r)] if healed else [])
                    + [num(r.get("perplexity"), 5), num(r.get("kl"), 3), r.get("error") or r.get("failed", "")])
    return markdown_table(["variant", "ratio", "head", "head computes by", "embedding + head stored (MiB)",
                           "head read / token (MiB)", "head MFLOP / token"]
                          + (["unhealed", "healed perplexity"] if healed else ["perplexity"]) + ["KL", "note"], body)


def frequency_finding(rows: list[dict]) -> list[str]:
    """Per ratio: perplexity of tiers by frequency vs by norm vs uniform tt (measured, either way)."""
    lines = []
    by = {(r["variant"], r["target"]): r for r in rows if r["table"] == "variants" and "perplexity" in r}
    for target in sorted({t for _, t in by}):
        freq, norm, flat = (by.get((v, target)) for v in ("tt tiers by freq", "tt tiers by norm", "tt"))
        if freq and norm:
            verdict = "helps" if freq["perplexity"] < norm["perplexity"] else "does not help"
            flat_text = f", uniform tt {flat['perplexity']:.5g} at {flat['ratio']:.2f}x" if flat else ""
            lines.append(f"- {target:g}x: by frequency {freq['perplexity']:.5g} ({freq['ratio']:.2f}x), by norm "
                         f"{norm['perplexity']:.5g} ({norm['ratio']:.2f}x){flat_text}: frequency {verdict}.")
    return lines


def frequency_section(rows: list[dict]) -> list[str]:
    """The frequency-vs-norm tiers section, or nothing when the sweep did not run both."""
    findings = frequency_finding(rows)
    if not findings:
        return []
    return ["## Frequency-aware ranks", "",
            "Two tiers of ranks at the same total bytes; the high tier holds the most frequent tokens of "
            "WikiText-2 valid (`by=freq`) or the largest-norm rows (`by=norm`, the control).", "",
            *findings, ""]


def markdown(result: dict) -> str:
    ref = result["reference"]
    return "\n".join([
        "# Embedding compression sweep", "",
        f"Made by `{result['command']}` on {result['date']} ({result['machine']['processor']}, "
        f"{result['machine']['cpus']} CPUs, torch {result['machine']['torch']}).", "",
        f"Model: {result['model']}. Perplexity, KL(dense || compressed) and top-1 agreement on the first "
        f"{result['tokens']:,} of {result['split_tokens']:,} WikiText-2 test tokens (windows of "
        f"{result['context']} every {result['stride']}). Dense perplexity on these tokens: "
        f"{ref['perplexity']:.5g}. Only the embedding is compressed; ratios are dense embedding bytes / "
        "compressed embedding bytes (float32; the tier map counts one byte per token)."
        + (healing_note(result["heal"]) if result.get("heal") else ""), "",
        "## Variants at the same ratio (the tied head kept dense, as TensorGPT does)", "",
        variants_table(result["rows"]), "",
        "## Tied head policies", "",
        "`dense`: the head keeps the original table (its bytes counted). `shared`: logits from the "
        "embedding's factors (contracted through them where the table allows, else the table is rebuilt "
        "and held in memory). `lowrank`: a truncated SVD of the original table at the same ratio. Head "
        "bytes read and FLOPs are for one decoded token's logits, float32.", "",
        heads_table(result["rows"]), "",
        *frequency_section(result["rows"]),
        "## Published figures (not reproduced here)", "",
        "From the TensorGPT papers, on GPT-2 with pretrained weights, which cannot be loaded on this "
        "machine; they are the papers' claims, not our measurements.", "",
        markdown_table(["method", "model", "embedding ratio", "reported quality"], PAPER), "",
    ])


def healing_note(heal: dict) -> str:
    return (f" Every entry was healed before it was scored: all parameters distilled towards the dense model for "
            f"{heal['steps']:,} steps of {heal['batch']} x {heal['seq_len']} tokens at lr {heal['lr']:g}, on "
            + (f"`--data {heal['data']}`" if heal.get("data") else f"the first {heal['tokens']:,} WikiText-2 valid tokens")
            + "; `unhealed` is the same entry before.")


def head_points(rows: list[dict]) -> list[dict]:
    """Every scored entry with a head cost, as (label, head MiB read per token, perplexity, unhealed)."""
    return [{"label": f"{r['variant']}, head {r['head']}", "read": r["head_cost"]["bytes_read"] / 2**20,
             "perplexity": r["perplexity"], "unhealed": r.get("unhealed", {}).get("perplexity")}
            for r in rows if "perplexity" in r and r.get("head_cost")]


def draw_entries(ax, points: list[dict], dense: float) -> None:
    """One row per entry, best healed first: perplexity (log), filled after healing, hollow before; the
    colour is the head's bytes read per token. Scores past 8x dense sit at the edge with their value."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    points = sorted(points, key=lambda p: p["perplexity"])
    reads = sorted({round(p["read"]) for p in points}, reverse=True)
    edge = dense * 8
    for y, p in enumerate(points):
        colour = f"C{reads.index(round(p['read']))}"
        ax.plot([min(p["perplexity"], edge)], [y], "o", color=colour)
        if p["unhealed"] is not None:
            before = min(p["unhealed"], edge)
            ax.plot([before], [y], ">" if p["unhealed"] > edge else "o", mfc="none", color=colour)
            ax.plot([before, min(p["perplexity"], edge)], [y, y], ":", color=colour, linewidth=1)
            if p["unhealed"] > edge:
                ax.annotate(f"{p['unhealed']:,.0f}", (edge, y), xytext=(-6, 4), textcoords="offset points",
                            ha="right", fontsize=6, color=colour)
    for i, read in enumerate(reads):
        ax.plot([], [], "o", color=f"C{i}", label=f"head reads about {read} MiB / token")
    ax.axvline(dense, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_yticks(range(len(points)), [p["label"] for p in points], fontsize=7)
    ax.invert_yaxis()
    ax.set(xscale="log", xlim=(dense * 0.95, edge * 1.05), xlabel="perplexity (log); hollow: before healing")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.grid(alpha=0.3, which="both", axis="x")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(reads) + 1, frameon=False)


def plot(result: dict, path: Path) -> None:
    """Perplexity and KL against the ratio (when several ratios were swept), and perplexity against the
    head's bytes read per decoded token for every entry (unhealed -> healed when the sweep healed)."""
    rows = [r for r in result["rows"] if r["table"] == "variants" and "perplexity" in r]
    points = head_points(result["rows"])
    curves = len({r["target"] for r in rows}) > 1
    fig, axes = new_figure(2 * curves + bool(points) or 1)
    if not rows and not points:  # nothing was built: say so rather than draw empty log axes
        axes[0].text(0.5, 0.5, "no variant was built (see the table)", ha="center", va="center")
        axes[0].set_axis_off()
        fig.savefig(path, bbox_inches="tight")
        return
    if curves:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        left, right = axes[:2]
        for i, variant in enumerate(VARIANTS):
            mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["ratio"])
            if mine:
                left.plot([r["ratio"] for r in mine], [r["perplexity"] for r in mine], "o-", color=f"C{i}", label=variant)
                right.plot([r["ratio"] for r in mine], [r["kl"] for r in mine], "o-", color=f"C{i}", label=variant)
        left.axhline(result["reference"]["perplexity"], color="black", linestyle="--", linewidth=1, label="dense")
        ticks = sorted({r["target"] for r in rows})
        for ax, label, scale in ((left, "perplexity (log)", "log"),
                                 (right, "KL(dense || compressed), nats/token", "linear")):
            ax.set(xscale="log", yscale=scale, xlabel="embedding compression ratio (log)", ylabel=label)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    if points:
        draw_entries(axes[-1], points, result["reference"]["perplexity"])
    healed = f"healed {result['heal']['steps']} steps; " if result.get("heal") else ""
    fig.suptitle(f"{result['model']}: embedding and tied head; {healed}{result['tokens']:,} WikiText-2 test tokens",
                 fontsize=9)
    fig.savefig(path, bbox_inches="tight")


def render(result: dict, stem: Path) -> list[Path]:
    """`stem`.md and `stem`.png redrawn from a finished sweep's JSON (its measurements unchanged)."""
    paths = [stem.with_suffix(".md"), stem.with_suffix(".png")]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(markdown(result))
    with atomic_path(paths[1]) as tmp:
        plot(result, tmp)
    return paths


def sweep(args: argparse.Namespace, command: str, heal: HealSettings | None = None) -> dict:
    """Every entry built, measured and scored (with `heal`: scored, healed and scored again)."""
    result = run_entries(lambda model: entries(model.config.hidden_size, args.ratios, args.head_ratios,
                                               getattr(args, "variants", None)),
                         args, measure, partial_path(Path(args.out)), heal)
    result |= {"command": command, "date": datetime.date.today().isoformat(), "paper": PAPER}
    paths = write_outputs(Path(args.out), result, markdown(result), lambda p: plot(result, p))
    print(variants_table(result["rows"]))
    print(f"wrote {', '.join(map(str, paths))}")
    return result
