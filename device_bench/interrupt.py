"""SIGINT and SIGTERM end a command with one line and exit 130 / 143, after its temporaries are removed.

`run_command(body)` turns either signal into `Interrupted`, a BaseException like KeyboardInterrupt,
so every `finally` on the way out runs (device_bench.files.atomic_path removes its temporary there).
Further signals are ignored while that happens.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The command was stopped by `signum`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, _frame) -> None:
    for caught in CAUGHT:
        signal.signal(caught, signal.SIG_IGN)  # let the clean-up finish
    raise Interrupted(signum)


def run_command(body: Callable[[], int]) -> int:
    """Run `body` (the command; returns its exit code); on SIGINT/SIGTERM print one line and return
    128 + the signal's number (130, 143)."""
    if threading.current_thread() is not threading.main_thread():
        return body()
    previous = {s: signal.signal(s, _stop) for s in CAUGHT}
    try:
        return body()
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"error: interrupted by {signal.Signals(signum).name}: unfinished outputs were removed",
              file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
