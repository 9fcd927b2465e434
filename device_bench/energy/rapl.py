"""Intel/AMD RAPL package energy counters from Linux powercap (x86 hosts)."""

import os
import re
import time

from device_bench.energy.meter import Reading, read_text, sysfs_name
from device_bench.errors import first_line

RAPL_BASE = "/sys/class/powercap"
PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")  # intel-rapl:N:M are sub-domains (core, uncore, dram)


class RaplMeter:
    """Sum of the package domains' energy_uj counters, read at start and stop.

    A counter that wrapped (end below start) gains its max_energy_range_uj; one wrap per interval
    is assumed, which holds for any bench run (a wrap takes many minutes at full power).
    Domains not named package-N (e.g. psys, which already includes the packages) are left out.
    Measures the CPU packages only, not memory, disks or the rest of the machine.
    """

    name = "rapl"
    kind = "measured"

    def __init__(self, base: str = RAPL_BASE):
        self.base = base
        self._domains: list[str] = []
        self._start: list[int] = []
        self._t0 = 0.0

    @property
    def source(self) -> str:
        names = ", ".join(os.path.basename(d) for d in self._domains)
        return f"Linux powercap RAPL package counters ({names}): CPU packages only"

    def available(self) -> str | None:
        try:
            entries = sorted(os.listdir(self.base))
        except OSError:
            return f"no {self.base} (not Linux, or no powercap driver)"
        domains = [os.path.join(self.base, e) for e in entries
                   if PACKAGE_DOMAIN.fullmatch(e) and sysfs_name(os.path.join(self.base, e)).startswith("package")]
        if not domains:
            return f"no RAPL package domains (intel-rapl:N named package-N) under {self.base}"
        for folder in domains:
            for attribute in ("energy_uj", "max_energy_range_uj"):
                path = os.path.join(folder, attribute)
                try:
                    _counter(folder, attribute)
                except PermissionError:
                    return (f"{path} is readable by root only (Linux >= 5.10, CVE-2020-8694): "
                            "run as root or chmod o+r it")
                except (OSError, ValueError) as e:
                    return f"cannot read {path}: {first_line(e)}"
        self._domains = domains
        return None

    def start(self) -> None:
        self._start = [_counter(d) for d in self._domains]
        self._t0 = time.perf_counter()

    def stop(self) -> Reading:
        end = [_counter(d) for d in self._domains]
        seconds = time.perf_counter() - self._t0
        microjoules = 0
        for folder, a, b in zip(self._domains, self._start, end):
            microjoules += b - a if b >= a else b - a + _counter(folder, "max_energy_range_uj")
        return Reading(microjoules / 1e6, seconds, 2, None)


def _counter(folder: str, attribute: str = "energy_uj") -> int:
    return int(read_text(os.path.join(folder, attribute)))
