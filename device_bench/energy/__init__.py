"""Energy meters, one module each: measure (or estimate) the joules of the measured runs.

`open_meter("auto", ...)` tries METERS in order and takes the first that is available here;
every meter it passes over is listed with its one-line reason.
"""

from device_bench.energy.csv_log import CsvMeter
from device_bench.energy.estimate import EstimateMeter
from device_bench.energy.hwmon import HwmonMeter
from device_bench.energy.meter import Meter
from device_bench.energy.nvml import NvmlMeter
from device_bench.energy.pi5_pmic import Pi5PmicMeter
from device_bench.energy.rapl import RaplMeter
from device_bench.errors import BenchError
from device_bench.profiles import Profile

METERS = ("rapl", "hwmon", "pi5-pmic", "nvml", "csv", "estimate")  # also the auto order


def open_meter(
    name: str,
    profile: Profile,
    energy_csv: str | None = None,
    csv_columns: tuple[str, str] = ("timestamp", "watts"),
    nvml_device: int | None = None,
) -> tuple[Meter, list[dict]]:
    """The meter `name`, or with "auto" the first available one; and the meters skipped, with why.

    Auto tries nvml only when `nvml_device` is given and csv only when `energy_csv` is, and ends
    with the always-available estimate (from `profile`). A named meter that is unavailable is a
    BenchError that says why.
    """
    meters = {
        "rapl": RaplMeter(),
        "hwmon": HwmonMeter(),
        "pi5-pmic": Pi5PmicMeter(),
        "nvml": NvmlMeter(nvml_device or 0),
        "csv": CsvMeter(energy_csv, *csv_columns),
        "estimate": EstimateMeter(profile),
    }
    if name == "auto":
        order = [m for m in METERS if (m != "nvml" or nvml_device is not None) and (m != "csv" or energy_csv)]
    elif name in meters:
        order = [name]
    else:
        raise BenchError(f"unknown energy meter {name!r}: choose auto, {', '.join(METERS)}")
    skipped = []
    for candidate in order:
        why = meters[candidate].available()
        if why is None:
            return meters[candidate], skipped
        skipped.append({"meter": candidate, "why": why})
    raise BenchError(f"energy meter {name} is not available here: {skipped[-1]['why']}")
