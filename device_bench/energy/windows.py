"""Energy of time windows cut from a recorded energy-counter trace, and the part of it above idle.

A trace is a list of (seconds, millijoules) reads of a cumulative counter such as NVML's
total-energy counter (the GPU board's joules since the driver loaded). The counter at any
moment inside the trace is interpolated linearly between the reads around it; a window's
energy is the counter's rise from its start to its end. Idle power is the energy of a window
with nothing running divided by its length, and "above idle" subtracts that power times the
measured window's length: what the work itself cost, on top of keeping the board switched on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

from device_bench.errors import BenchError


def counter_at(trace: Sequence[Sequence[float]], t: float) -> float:
    """The counter (millijoules) at time `t`, linear between the reads around it; exact at a read."""
    times = [point[0] for point in trace]
    if not trace or t < times[0] or t > times[-1]:
        span = f"{times[0]:.3f}..{times[-1]:.3f} s" if trace else "no reads"
        raise BenchError(f"time {t:.3f} s is outside the energy counter trace ({span}): mark windows while recording")
    i = bisect_left(times, t)
    if times[i] == t:
        return float(trace[i][1])
    (t0, e0), (t1, e1) = trace[i - 1][:2], trace[i][:2]
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0)


def window_joules(trace: Sequence[Sequence[float]], t0: float, t1: float) -> float:
    """Joules the counter rose by between `t0` and `t1` (seconds, in the trace's clock)."""
    if t1 <= t0:
        raise BenchError(f"an energy window must end after it starts (got {t0:.3f}..{t1:.3f} s)")
    return (counter_at(trace, t1) - counter_at(trace, t0)) / 1e3


def idle_power(trace: Sequence[Sequence[float]], t0: float, t1: float) -> dict:
    """Idle watts over `t0`..`t1` from the counter, with the spread of the power reads inside it.

    Trace points may carry a third value, the instantaneous power in milliwatts (NVML's
    power reading); their min/median/max show whether the board settled during the window.
    """
    watts = window_joules(trace, t0, t1) / (t1 - t0)
    inside = [p for p in trace if t0 <= p[0] <= t1]
    powers = [p[2] / 1e3 for p in inside if len(p) > 2]
    return {
        "watts": watts,
        "seconds": t1 - t0,
        "reads": len(inside),
        "power_reads_w": ({"min": min(powers), "median": float(np.median(powers)), "max": max(powers)}
                          if powers else None),
    }


def above_idle(joules: float, seconds: float, idle_watts: float | None, tokens: int) -> dict:
    """J/token for the whole board and, when the idle power is known, above idle.

    Above idle = joules - idle_watts * seconds: the energy the work added on top of an idle
    board. It can come out slightly negative on a noisy near-idle window; it is reported as is.
    """
    if tokens <= 0 or seconds <= 0:
        raise BenchError(f"J/token needs tokens > 0 and seconds > 0 (got {tokens} tokens, {seconds} s)")
    entry = {"joules": joules, "seconds": seconds, "average_watts": joules / seconds, "tokens": tokens,
             "joules_per_token": joules / tokens, "idle_watts": idle_watts}
    if idle_watts is not None:
        extra = joules - idle_watts * seconds
        entry |= {"joules_above_idle": extra, "average_watts_above_idle": extra / seconds,
                  "joules_per_token_above_idle": extra / tokens}
    return entry


def counter_update_hz(trace: Sequence[Sequence[float]], t0: float, t1: float) -> float | None:
    """How often the counter's value changed between `t0` and `t1` (its resolution in time), or None."""
    values = [p[1] for p in trace if t0 <= p[0] <= t1]
    changes = sum(1 for a, b in zip(values, values[1:]) if b != a)
    return changes / (t1 - t0) if len(values) > 1 and t1 > t0 else None
