"""What every energy meter returns, and the sampling and integration the meters share."""

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from device_bench.errors import BenchError, first_line


@dataclass(frozen=True)
class Reading:
    """Energy over one start()..stop() interval."""

    joules: float
    seconds: float
    samples: int  # power samples or counter reads taken
    sample_hz: float | None  # None for energy counters, which need no sampling rate


class Meter(Protocol):
    """An energy meter: `available()`, then `start()` and `stop()` around the measured work."""

    name: str  # as --meter spells it
    kind: str  # "measured" or "estimated"
    source: str  # what was read (a measured meter), or where the estimate's numbers come from

    def available(self) -> str | None:
        """None when usable here, else a one-line reason why not."""
        ...

    def start(self) -> None: ...

    def stop(self) -> Reading: ...


def read_text(path: str) -> str:
    """A sysfs attribute's value, stripped."""
    with open(path) as f:
        return f.read().strip()


def sysfs_name(folder: str) -> str:
    """The `name` attribute of a sysfs device folder, or "" if it has none."""
    try:
        return read_text(os.path.join(folder, "name"))
    except OSError:
        return ""


def integrate(times: Sequence[float], watts: Sequence[float]) -> float:
    """Joules under a power curve sampled at `times` (seconds), by the trapezoid rule."""
    return sum((t1 - t0) * (w0 + w1) / 2 for t0, t1, w0, w1 in zip(times, times[1:], watts, watts[1:]))


class PowerSampler:
    """Call `read_watts` every `interval_s` in a background thread, and at start and stop; integrate."""

    def __init__(self, read_watts: Callable[[], float], interval_s: float):
        self.read_watts = read_watts
        self.interval_s = interval_s
        self._times: list[float] = []
        self._watts: list[float] = []
        self._error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        t = time.perf_counter()
        self._watts.append(self.read_watts())
        self._times.append(t)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as e:  # e.g. the sensor went away: report it at stop()
                self._error = e
                return

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> Reading:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise BenchError(f"power reading failed during the run: {first_line(self._error)}")
        self._sample()
        seconds = self._times[-1] - self._times[0]
        n = len(self._times)
        return Reading(integrate(self._times, self._watts), seconds, n, (n - 1) / seconds if seconds > 0 else None)


class SampledMeter:
    """Base of meters that read watts (`_watts()`) every `interval_s` and integrate them."""

    interval_s: float

    def _watts(self) -> float:
        raise NotImplementedError

    def start(self) -> None:
        self._sampler = PowerSampler(self._watts, self.interval_s)
        self._sampler.start()

    def stop(self) -> Reading:
        return self._sampler.stop()
