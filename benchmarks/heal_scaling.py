"""How much more distillation issue 14's goal plans would need: a power law through the measured points.

    python benchmarks/heal_scaling.py [--out benchmarks/results/heal-scaling]

Reads the end-of-schedule full-text scores of the goal plans (20% and 30% of all parameters, the same
compression and text mix) from the sessions that healed them to the end of a schedule, and the held-out
curve the tenth session recorded as it trained. The gap to the dense model is measured as excess log
perplexity, ln(healed / dense); a line through the points on log-log axes says how many tokens would bring it
to the goal if it kept falling at the measured rate. That is an extrapolation, and is labelled an estimate
everywhere it is printed: a floor under the gap would make the true figure larger.
Writes scaling.json, scaling.md and scaling.png under --out.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# sessions that healed the goal plans to the end of their learning-rate schedule: folder with the runs'
# heal.json, options and full-text eval JSON
SESSIONS = {"fifth (600 s, 5 runs side by side)": REPO / "benchmarks/results/ship-2026-12-02-h200/heal/logs",
            "tenth (800 s, 2 runs side by side)": REPO / "benchmarks/results/long-2026-12-02-h200"}
# the goal: plan's run name in those sessions, and the allowed rise over dense perplexity
GOALS = {"20% of all": ("plan0-heal0", 0.05), "30% of all": ("plan1-heal0", 0.10)}
CURVE_SESSION = "tenth (800 s, 2 runs side by side)"
TEXT = "wikitext2"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def plan_of(folder: Path, run: str) -> str:
    """The compression plan a run healed, from gpu_heal.sh's options file."""
    for line in (folder / f"heal-{run}.options").read_text().splitlines():
        if line.startswith("plan: "):
            return line[len("plan: "):].strip()
    raise SystemExit(f"{folder}/heal-{run}.options names no plan: re-run the session's gpu_heal.sh")


def end_point(folder: Path, run: str, text: str = TEXT) -> dict:
    """A run's full-text score at the end of its schedule, with the tokens it trained on."""
    heal = load(folder / f"{run}.heal.json")
    scores = load(folder / f"eval-{run}-{text}.json")
    training = heal["training"]
    model, dense = scores["scores"]["model"], scores["scores"]["reference"]
    return {"tokens_seen": training["tokens_seen"], "steps": training["steps_done"], "steps_planned": heal["config"]["steps"],
            "perplexity": model["perplexity"], "dense": dense["perplexity"], "kl": model["kl"],
            "text_tokens": scores["tokens"], "excess": math.log(model["perplexity"] / dense["perplexity"])}


def curve(folder: Path, run: str, text: str = TEXT) -> list[dict]:
    """The held-out curve recorded while training (a slice of the text, against the teacher on that slice)."""
    points = load(folder / f"{run}.heal.json")["training"].get("curves", [])
    return [{"tokens_seen": p["tokens_seen"], "perplexity": p[text]["perplexity"], "slice_tokens": p[text]["tokens"],
             "excess": math.log(p[text]["perplexity"] / p[text]["teacher_perplexity"])}
            for p in points if p["tokens_seen"] > 0 and text in p]


def power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of excess = a * tokens**-b, least squares on log-log axes (at least two points)."""
    if len(points) < 2:
        raise ValueError("a power law needs at least two points")
    xs = [math.log(t) for t, _ in points]
    ys = [math.log(e) for _, e in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def tokens_to(excess: float, a: float, b: float) -> float:
    """Tokens at which a * tokens**-b falls to `excess` (infinite when the fitted gap does not fall)."""
    return math.inf if b <= 0 else (a / excess) ** (1 / b)


def analyse() -> dict:
    result = {}
    for goal, (run, allowed) in GOALS.items():
        plans = {session: plan_of(folder, run) for session, folder in SESSIONS.items()}
        if len(set(plans.values())) != 1:
            raise SystemExit(f"{goal}: the sessions healed different plans ({plans}): fix SESSIONS or GOALS")
        ends = {session: end_point(folder, run) for session, folder in SESSIONS.items()}
        target = math.log(1 + allowed)
        a, b = power_law([(e["tokens_seen"], e["excess"]) for e in ends.values()])
        late = [p for p in curve(SESSIONS[CURVE_SESSION], run) if p["tokens_seen"] >= 10e6]
        a_c, b_c = power_law([(p["tokens_seen"], p["excess"]) for p in late])
        # the curve's slice measures excess against the teacher on 16k tokens; its rate, applied from the last
        # full-text point, is the second estimate
        last = ends[CURVE_SESSION]
        result[goal] = {"plan": plans[CURVE_SESSION], "goal_rise": allowed, "ends": ends,
                        "fit_ends": {"a": a, "b": b, "tokens_to_goal_estimate": tokens_to(target, a, b)},
                        "fit_curve": {"from_tokens": late[0]["tokens_seen"] if late else None, "b": b_c,
                                      "tokens_to_goal_estimate": last["tokens_seen"] * (last["excess"] / target) ** (1 / b_c)
                                      if b_c > 0 else math.inf},
                        "curve": curve(SESSIONS[CURVE_SESSION], run)}
    return result


def table(result: dict) -> str:
    lines = ["| goal | session | tokens seen | WikiText-2 (all tokens) | vs dense | KL |", "|---|---|---|---|---|---|"]
    for goal, r in result.items():
        for session, e in r["ends"].items():
            lines.append(f"| {goal} (goal +{r['goal_rise']:.0%}) | {session} | {e['tokens_seen'] / 1e6:.1f}M | "
                         f"{e['perplexity']:.3f} | {e['perplexity'] / e['dense'] - 1:+.1%} | {e['kl']:.3f} |")
    lines += ["", "Extrapolated tokens to the goal (**estimates**: a power law of ln(healed / dense) against tokens "
              "seen, assuming the gap keeps falling at the measured rate):", "",
              "| goal | exponent, end points | tokens to goal | exponent, tenth session's curve past 10M | tokens to goal |",
              "|---|---|---|---|---|"]
    for goal, r in result.items():
        f, c = r["fit_ends"], r["fit_curve"]
        lines.append(f"| {goal} | {f['b']:.3f} | ~{f['tokens_to_goal_estimate'] / 1e9:.2f}B (estimate) | {c['b']:.3f} | "
                     f"~{c['tokens_to_goal_estimate'] / 1e9:.2f}B (estimate) |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (goal, r), color in zip(result.items(), ["tab:blue", "tab:orange"]):
        ends = sorted(r["ends"].values(), key=lambda e: e["tokens_seen"])
        ax.plot([e["tokens_seen"] for e in ends], [e["excess"] for e in ends], "o", color=color, markersize=8,
                label=f"{goal}: end of schedule, full WikiText-2 test")
        ax.plot([p["tokens_seen"] for p in r["curve"]], [p["excess"] for p in r["curve"]], ".-", color=color, alpha=0.4,
                label=f"{goal}: while training (16k-token slice, tenth session)")
        target = math.log(1 + r["goal_rise"])
        reach = r["fit_ends"]["tokens_to_goal_estimate"]
        xs = [ends[0]["tokens_seen"], reach]
        ax.plot(xs, [r["fit_ends"]["a"] * x ** -r["fit_ends"]["b"] for x in xs], "--", color=color, linewidth=1,
                label=f"{goal}: power law through the end points (estimate)")
        ax.axhline(target, color=color, linestyle=":", linewidth=1, label=f"{goal}: goal +{r['goal_rise']:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distillation tokens seen")
    ax.set_ylabel("ln(healed perplexity / dense)")
    ax.set_title("Goal plans: the gap to dense against distillation tokens (SmolLM2-135M, H200)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/heal-scaling")
    args = parser.parse_args()
    result = analyse()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (args.out / "scaling.md").write_text(text + "\n")
    plot(result, args.out / "scaling.png")
    print(text)
    print(f"\nwrote {args.out}/scaling.json, scaling.md and scaling.png")


if __name__ == "__main__":
    main()
