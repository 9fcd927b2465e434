"""Progress lines on stderr, with the seconds since the command started."""

from __future__ import annotations

import sys
import time

_START = time.time()


def say(message: str) -> None:
    print(f"[{time.time() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)
