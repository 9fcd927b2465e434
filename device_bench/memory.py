"""Peak resident memory of this process during a block of code."""

import resource
import sys
import threading

import psutil


class PeakRSS:
    """Track peak RSS inside a `with` block.

    peak_sampled_bytes: max RSS seen by a background thread sampling every ~5 ms
        (may miss spikes shorter than the interval).
    peak_os_bytes: the kernel's ru_maxrss. This is the peak over the whole process
        lifetime, not just the block, so it includes anything that ran before it.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_sampled_bytes = 0
        self.peak_os_bytes = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)

    def _sample(self) -> None:
        self.peak_sampled_bytes = max(self.peak_sampled_bytes, self._process.memory_info().rss)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_os_bytes = maxrss if sys.platform == "darwin" else maxrss * 1024  # Linux: KiB
