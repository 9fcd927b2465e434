"""Ratio targets that hold: a `ratio=R` spec is met within TOLERANCE, or refused in one line that
names the nearest ratios the method can reach, never silently far off.

Where one rank setting steps too coarsely (small ranks: one rank more or less is a large share of
the parameters), methods mix two adjacent settings: some rows of a table, or some layers of a
target, take the higher one, so that the total lands on the target.
"""

from __future__ import annotations

from typing import Iterable

from toolkit.errors import TensoredgeError

TOLERANCE = 0.05  # achieved / asked ratio must lie within 1 +- this
MIX_ABOVE = 0.02  # one rank setting missing the ratio by more than this: mix two settings


def off_by(achieved: float, target: float) -> float:
    return abs(achieved / target - 1)


def check_ratio(achieved: float, target: float, what: str, reachable: Iterable[float] = ()) -> None:
    """Refuse an achieved ratio more than TOLERANCE from the target, naming the nearest reachable."""
    if off_by(achieved, target) <= TOLERANCE:
        return
    nearest = sorted({round(r, 4) for r in (*reachable, achieved) if r > 0}, key=lambda r: off_by(r, target))[:2]
    shown = " or ".join(f"{r:.4g}x" for r in sorted(nearest))
    raise TensoredgeError(f"{what} cannot be compressed {target:g}x within {TOLERANCE:.0%}: the nearest it reaches "
                          f"is {shown}; ask for that ratio")


def rows_in_high(count: int, budget: float, low: float, high: float) -> int:
    """How many of `count` rows take `high` values (the rest `low`) so that the mean is at most
    `budget` and as close to it as whole rows allow."""
    if high <= low:
        return 0
    return int(min(count, max(0, (count * (budget - low)) // (high - low))))


def bump_within(extra: list[float], gain: list[float], left: float) -> list[bool]:
    """Which items take their higher setting: best `gain` per `extra` parameter first, while the
    extras fit in `left`."""
    order = sorted(range(len(extra)), key=lambda i: -gain[i] / max(extra[i], 1e-30))
    chosen = [False] * len(extra)
    for i in order:
        if extra[i] <= left:
            chosen[i], left = True, left - extra[i]
    return chosen


def step_over(extra: list[float], dense: float, kept: float, ratio: float) -> int | None:
    """When `kept` misses `ratio` by more than TOLERANCE from above (too few parameters), the item
    whose one step up, though over the budget, lands within it (the smallest such step); else None."""
    if off_by(dense / kept, ratio) <= TOLERANCE:
        return None
    fitting = [i for i, e in enumerate(extra) if off_by(dense / (kept + e), ratio) <= TOLERANCE]
    return min(fitting, key=lambda i: extra[i]) if fitting else None
