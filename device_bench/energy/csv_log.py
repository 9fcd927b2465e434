"""An external meter's CSV log (e.g. a USB power meter's), aligned to the run by wall-clock time."""

import csv
import time
from collections.abc import Callable

import numpy as np

from device_bench.energy.meter import Reading, integrate
from device_bench.errors import BenchError, first_line


class CsvMeter:
    """Integrate the watts a CSV log recorded between start() and stop().

    Its time column holds unix seconds (time.time() of this machine: keep both clocks in sync).
    The log is read at stop(); the power at the window's edges is interpolated from the samples
    around them (or held from the nearest sample inside), so the energy covers the window exactly.
    `clock` is injectable so that tests can replay a recorded log.
    """

    name = "csv"
    kind = "measured"

    def __init__(self, path: str | None, time_column: str = "timestamp", watts_column: str = "watts",
                 clock: Callable[[], float] = time.time):
        self.path = path
        self.columns = (time_column, watts_column)
        self.clock = clock
        self._t0 = 0.0

    @property
    def source(self) -> str:
        return f"external meter log {self.path} (columns {self.columns[0]}, {self.columns[1]})"

    def available(self) -> str | None:
        if self.path is None:
            return "no --energy-csv FILE given"
        try:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
        except OSError as e:
            return f"cannot read {self.path}: {first_line(e)}"
        missing = [c for c in self.columns if c not in header]
        if missing:
            return f"{self.path} has no column {missing[0]!r} (its columns: {', '.join(header) or 'none'})"
        return None

    def _samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Times and watts of every row with two numbers, sorted by time (a partial last line is skipped)."""
        rows = []
        with open(self.path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    rows.append((float(row[self.columns[0]]), float(row[self.columns[1]])))
                except (TypeError, ValueError):
                    continue
        rows.sort()
        return np.array([t for t, _ in rows]), np.array([w for _, w in rows])

    def start(self) -> None:
        self._t0 = self.clock()

    def stop(self) -> Reading:
        t0, t1 = self._t0, self.clock()
        try:
            times, watts = self._samples()
        except OSError as e:
            raise BenchError(f"cannot read {self.path}: {first_line(e)}") from None
        inside = times[(times >= t0) & (times <= t1)]
        if inside.size == 0:
            spans = f"spans {times[0]:.3f}..{times[-1]:.3f}" if times.size else "has no samples"
            raise BenchError(f"{self.path} has no samples inside the measured window {t0:.3f}..{t1:.3f} "
                             f"(unix seconds, {t1 - t0:.3f} s); the file {spans}: is the meter logging in "
                             "unix seconds, more often than the run is long (else add --repeats)?")
        grid = np.concatenate([[t0], inside, [t1]])
        joules = integrate(grid.tolist(), np.interp(grid, times, watts).tolist())
        return Reading(joules, t1 - t0, int(inside.size), inside.size / (t1 - t0))
