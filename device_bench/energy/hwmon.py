"""A power sensor under Linux hwmon, such as an INA219/INA226/INA260 on the board's supply."""

import glob
import os
import re

from device_bench.energy.meter import SampledMeter, read_text, sysfs_name
from device_bench.errors import first_line

HWMON_BASE = "/sys/class/hwmon"
INA_NAMES = ("ina219", "ina226", "ina260")


class HwmonMeter(SampledMeter):
    """Sample a hwmon device's power*_input (microwatts) in a background thread and integrate.

    Uses the first device named like an INA power monitor, else the first with a power1_input;
    its power*_input channels are summed.
    """

    name = "hwmon"
    kind = "measured"

    def __init__(self, base: str = HWMON_BASE, interval_s: float = 0.05):
        self.base = base
        self.interval_s = interval_s
        self._device = ""
        self._files: list[str] = []

    @property
    def source(self) -> str:
        return (f"hwmon {self._device} ({sysfs_name(self._device)}) "
                f"{', '.join(os.path.basename(f) for f in self._files)}, every {self.interval_s * 1e3:.0f} ms")

    def available(self) -> str | None:
        devices = [d for d in glob.glob(os.path.join(self.base, "hwmon*"))
                   if os.path.exists(os.path.join(d, "power1_input"))]
        if not devices:
            return f"no hwmon device with power1_input under {self.base}"
        device = min(devices, key=lambda d: (sysfs_name(d) not in INA_NAMES, _number(d)))
        files = sorted(glob.glob(os.path.join(device, "power*_input")))
        try:
            _microwatts(files)
        except (OSError, ValueError) as e:
            return f"cannot read {device}'s power*_input: {first_line(e)}"
        self._device, self._files = device, files
        return None

    def _watts(self) -> float:
        return _microwatts(self._files) / 1e6


def _microwatts(files: list[str]) -> int:
    return sum(int(read_text(f)) for f in files)


def _number(device: str) -> int:
    """hwmon10 -> 10, so that hwmon10 sorts after hwmon9."""
    return int(re.sub(r"\D", "", os.path.basename(device)) or 0)
