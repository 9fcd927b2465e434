"""Raspberry Pi 5 PMIC rail readings from `vcgencmd pmic_read_adc`."""

import re
import subprocess
from collections.abc import Callable

from device_bench.energy.meter import SampledMeter
from device_bench.errors import first_line

COMMAND = ["vcgencmd", "pmic_read_adc"]
# "   VDD_CORE_A current(7)=2.49570000A" and "   VDD_CORE_V volt(15)=0.87229030V"
RAIL = re.compile(r"^\s*(\w+)_([AV]) (?:current|volt)\(\d+\)=([-+.\deE]+)[AV]\s*$", re.MULTILINE)


def run_command(command: list[str]) -> str:
    """stdout of `command`; raises FileNotFoundError or CalledProcessError."""
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=10).stdout


def rail_watts(text: str) -> dict[str, float]:
    """Watts per rail of `vcgencmd pmic_read_adc` output: X_A amps times X_V volts.

    Rails with only one of the two (EXT5V_V, BATT_V) are left out.
    """
    amps, volts = {}, {}
    for rail, unit, value in RAIL.findall(text):
        (amps if unit == "A" else volts)[rail] = float(value)
    return {rail: a * volts[rail] for rail, a in amps.items() if rail in volts}


class Pi5PmicMeter(SampledMeter):
    """Sample the PMIC rails every `interval_s` in a background thread and integrate their power sum.

    The rails feed the SoC, memory and on-board supplies, not USB devices or the 5 V input's
    conversion losses, so this reads lower than a meter on the USB-C cable. `runner` runs the
    command and returns its stdout (tests feed recorded output through it).
    """

    name = "pi5-pmic"
    kind = "measured"

    def __init__(self, runner: Callable[[list[str]], str] = run_command, interval_s: float = 0.1):
        self.runner = runner
        self.interval_s = interval_s
        self._rails = 0

    @property
    def source(self) -> str:
        return (f"Raspberry Pi 5 PMIC, sum of V*A over {self._rails} rails "
                f"(vcgencmd pmic_read_adc every {self.interval_s * 1e3:.0f} ms): board rails, not the 5 V input")

    def available(self) -> str | None:
        try:
            rails = rail_watts(self.runner(COMMAND))
        except FileNotFoundError:
            return "vcgencmd not found (not Raspberry Pi OS)"
        except subprocess.CalledProcessError as e:  # e.g. older firmware, or not a Pi 5
            said = (e.stderr or e.stdout or "").strip().splitlines()
            return f"vcgencmd pmic_read_adc failed: {said[0] if said else f'exit status {e.returncode}'}"
        except (OSError, subprocess.SubprocessError) as e:
            return f"vcgencmd pmic_read_adc failed: {first_line(e)}"
        if not rails:
            return "vcgencmd pmic_read_adc reported no rail currents and volts (only a Raspberry Pi 5 has them)"
        self._rails = len(rails)
        return None

    def _watts(self) -> float:
        return sum(rail_watts(self.runner(COMMAND)).values())
