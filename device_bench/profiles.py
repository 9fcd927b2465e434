"""Device profiles: a board's cores, RAM and watts, and emulating its limits on a bigger host."""

import ctypes
import os
import resource
from dataclasses import dataclass

import psutil

from device_bench.errors import BenchError

GIB = 2**30


@dataclass(frozen=True)
class Profile:
    name: str
    cores: int
    threads: int  # default bench threads on this board
    memory_bytes: int  # board RAM
    idle_w: float  # whole board, idle
    active_w_per_core: float  # added per fully busy core
    source: str  # where the watt figures come from
    models: tuple[str, ...] = ()  # /proc/device-tree/model prefixes of this board


BOARDS = {
    p.name: p
    for p in (
        Profile(
            "pi4", cores=4, threads=4, memory_bytes=4 * GIB, idle_w=2.7, active_w_per_core=0.93,
            source="approximate: Raspberry Pi 4 B at its USB-C input, 2.7 W idle and 6.4 W under "
                   "stress --cpu 4 (pidramble.com power-consumption benchmarks, Jeff Geerling)",
            models=("Raspberry Pi 4", "Raspberry Pi Compute Module 4"),
        ),
        Profile(
            "pi5", cores=4, threads=4, memory_bytes=8 * GIB, idle_w=3.0, active_w_per_core=1.25,
            source="approximate: Raspberry Pi 5 8GB at its USB-C input, about 3 W idle and about 8 W "
                   "with all four cores loaded, as widely reported by reviewers (e.g. Jeff Geerling, "
                   "github.com/geerlingguy/sbc-reviews/issues/21); Raspberry Pi's product brief gives "
                   "only the 5V/5A supply; not yet checked against a primary measurement page",
            models=("Raspberry Pi 5", "Raspberry Pi Compute Module 5"),
        ),
        Profile(
            "pi-zero-2w", cores=4, threads=4, memory_bytes=512 * 2**20, idle_w=0.6, active_w_per_core=0.45,
            source="approximate: Raspberry Pi Zero 2 W, about 0.6 W idle (120 mA at 5 V, CNX Software's "
                   "Otii Arc measurements, Dec 2021) and about 2.4 W with all four cores loaded (the loaded figure "
                   "not yet checked against a primary page)",
            models=("Raspberry Pi Zero 2",),
        ),
    )
}
NAMES = (*BOARDS, "generic")


def generic_profile() -> Profile:
    """This host: its physical cores and RAM, with placeholder watts."""
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return Profile("generic", cores=cores, threads=cores, memory_bytes=psutil.virtual_memory().total,
                   idle_w=10.0, active_w_per_core=5.0, source="rough desktop-class placeholder, not a measurement")


def get_profile(name: str) -> Profile:
    """The profile called `name`; BenchError listing the names if there is none."""
    if name == "generic":
        return generic_profile()
    if name not in BOARDS:
        raise BenchError(f"unknown device profile {name!r}: choose one of {', '.join(NAMES)}")
    return BOARDS[name]


def detect_profile(board: str | None) -> Profile | None:
    """The profile of a /proc/device-tree/model string such as "Raspberry Pi 5 Model B Rev 1.0"."""
    for profile in BOARDS.values():
        if board and board.startswith(profile.models):
            return profile
    return None


def emulate(profile: Profile, threads: int, memory_cap_bytes: int | None = None) -> dict:
    """Hold this whole process to `profile`'s board, for good: run it in a process of its own.

    CPU affinity goes to the host's first `profile.cores` cores (all of them if it has fewer);
    RLIMIT_AS lets the address space grow by at most the board's RAM (or `memory_cap_bytes`)
    beyond what is mapped now, so that loading an over-budget model fails with MemoryError or a
    runtime's allocation error. Returns the result's "emulated" entry.
    """
    cap = memory_cap_bytes or profile.memory_bytes
    affinity = None
    if hasattr(os, "sched_setaffinity"):
        affinity = sorted(os.sched_getaffinity(0))[: profile.cores]
        os.sched_setaffinity(0, affinity)
    _one_malloc_arena()
    limit = psutil.Process().memory_info().vms + cap
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    return {"profile": profile.name, "threads": threads, "affinity": affinity, "memory_cap_bytes": cap}


def _one_malloc_arena() -> None:
    """Make new threads share glibc's main malloc arena.

    glibc reserves 64 MiB of address space for each thread's arena: reserved, not used, so no RAM
    on a board, but RLIMIT_AS counts it (4 runtime threads would take 256 MiB of the cap).
    """
    try:
        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX = -8 in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
