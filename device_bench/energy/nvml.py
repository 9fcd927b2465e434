"""An NVIDIA GPU's total-energy counter through NVML (pynvml, imported only when asked for)."""

import threading
import time

from device_bench.energy.meter import Reading
from device_bench.errors import BenchError, first_line


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
            self._nvml, self._handle = open_nvml(self.device)
        except BenchError as e:
            return str(e)
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


def open_nvml(device: int):
    """(pynvml, handle) of GPU `device` with its energy counter readable; raises BenchError saying why not."""
    try:
        import pynvml
    except ImportError:
        raise BenchError("pynvml is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as e:  # pynvml.NVMLError_*: no driver, no such GPU, not supported
        raise BenchError(f"NVML cannot read GPU {device}'s energy counter: {first_line(e)}") from None
    return pynvml, handle


def gpu_info(pynvml, handle) -> dict:
    """The GPU's name, power limits (W), driver and memory, as NVML reports them (None where it cannot)."""

    def ask(call, scale: float = 1.0):
        try:
            value = call(handle)
        except Exception:  # not supported on this GPU or driver
            return None
        if isinstance(value, bytes):
            value = value.decode()
        return value / scale if isinstance(value, (int, float)) and scale != 1.0 else value

    memory = ask(pynvml.nvmlDeviceGetMemoryInfo)
    return {
        "name": ask(pynvml.nvmlDeviceGetName),
        "power_limit_w": ask(pynvml.nvmlDeviceGetPowerManagementLimit, 1e3),
        "enforced_power_limit_w": ask(pynvml.nvmlDeviceGetEnforcedPowerLimit, 1e3),
        "default_power_limit_w": ask(pynvml.nvmlDeviceGetPowerManagementDefaultLimit, 1e3),
        "memory_total_bytes": getattr(memory, "total", None),
        "driver_version": _driver(pynvml),
    }


def _driver(pynvml) -> str | None:
    try:
        value = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


class NvmlRecorder:
    """Record GPU `device`'s energy counter (mJ) and power (mW) every `interval_s` for a whole run.

    A background thread reads both; `mark()` takes one more read at once and returns its time, so
    a measured window is cut from the trace exactly between two marks (device_bench.energy.windows).
    Times are time.perf_counter() seconds.
    """

    def __init__(self, device: int = 0, interval_s: float = 0.05):
        self.device = device
        self.interval_s = interval_s
        self.trace: list[tuple[float, int, int]] = []  # (seconds, millijoules, milliwatts)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._error: Exception | None = None
        self._nvml = None
        self._handle = None

    @property
    def source(self) -> str:
        return (f"NVML total-energy counter of GPU {self.device} (GPU board only), read at each window's edges "
                f"and every {self.interval_s * 1e3:.0f} ms")

    def start(self) -> dict:
        """Open NVML (BenchError if it cannot read the counter), start recording; returns gpu_info()."""
        self._nvml, self._handle = open_nvml(self.device)
        try:
            self.mark()
        except Exception as e:  # pynvml.NVMLError_*, e.g. no power reading on this GPU
            raise BenchError(f"NVML cannot read GPU {self.device}'s power: {first_line(e)}") from None
        self._thread.start()
        return gpu_info(self._nvml, self._handle)

    def mark(self) -> float:
        with self._lock:
            t = time.perf_counter()
            millijoules = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            milliwatts = self._nvml.nvmlDeviceGetPowerUsage(self._handle)
            self.trace.append((t, millijoules, milliwatts))
        return t

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.mark()
            except Exception as e:  # the GPU or driver went away: report it at stop()
                self._error = e
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise BenchError(f"NVML reading failed during the run: {first_line(self._error)}")
        self.mark()
        self._nvml.nvmlShutdown()
