"""Estimate energy from a device profile's watts and this process's CPU time: no sensor needed."""

import time

from device_bench.energy.meter import Reading
from device_bench.profiles import Profile


class EstimateMeter:
    """power = idle_w + active_w_per_core * busy cores, over the interval.

    Busy cores are this process's CPU seconds (all threads, time.process_time: finer than psutil's
    clock ticks) per wall second, at most the profile's cores.
    An estimate from published board figures, not a measurement: `source` says where they come from.
    """

    name = "estimate"
    kind = "estimated"

    def __init__(self, profile: Profile):
        self.profile = profile
        self._cpu0 = 0.0
        self._t0 = 0.0

    @property
    def source(self) -> str:
        return f"{self.profile.name} profile: {self.profile.source}"

    def available(self) -> str | None:
        return None

    def start(self) -> None:
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()

    def stop(self) -> Reading:
        seconds = time.perf_counter() - self._t0
        busy_cores = min((time.process_time() - self._cpu0) / seconds, self.profile.cores)
        watts = self.profile.idle_w + self.profile.active_w_per_core * busy_cores
        return Reading(watts * seconds, seconds, 2, None)
