"""An NVIDIA GPU's total-energy counter through NVML (pynvml, imported only when asked for)."""

import time

from device_bench.energy.meter import Reading
from device_bench.errors import first_line


class NvmlMeter:
    """nvmlDeviceGetTotalEnergyConsumption (millijoules since driver load) at start and stop.

    Measures the GPU board only (Volta or newer), not the CPU or the rest of the machine.
    """

    name = "nvml"
    kind = "measured"

    def __init__(self, device: int = 0):
        self.device = device
        self._nvml = None
        self._handle = None
        self._start = 0
        self._t0 = 0.0

    @property
    def source(self) -> str:
        return f"NVML total-energy counter of GPU {self.device}: GPU board only"

    def available(self) -> str | None:
        try:
            import pynvml
        except ImportError:
            return "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception as e:  # pynvml.NVMLError_*: no driver, no such GPU, not supported
            return f"NVML cannot read GPU {self.device}'s energy counter: {first_line(e)}"
        self._nvml = pynvml
        return None

    def _millijoules(self) -> int:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def start(self) -> None:
        self._start = self._millijoules()
        self._t0 = time.perf_counter()

    def stop(self) -> Reading:
        millijoules = self._millijoules() - self._start
        seconds = time.perf_counter() - self._t0
        self._nvml.nvmlShutdown()
        return Reading(millijoules / 1e3, seconds, 2, None)
