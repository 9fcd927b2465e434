"""Describe the machine a benchmark ran on."""

import platform
import socket
from importlib import metadata

import psutil

# /proc/cpuinfo "CPU part" ids of ARM cores common on boards; arm64 kernels print no "model name".
ARM_CORES = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def _cpu_model() -> str | None:
    parts = []
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = (x.strip() for x in line.partition(":"))
        if key == "model name":
            return value
        if key == "CPU part" and value not in parts:
            parts.append(value)
    if parts:  # e.g. "Cortex-A55 + Cortex-A76" on a big.LITTLE board
        return " + ".join(ARM_CORES.get(p, f"ARM part {p}") for p in parts)
    return platform.processor() or None


def _family(arch: str) -> str:
    """"arm" for aarch64/arm64/armv7l..., "x86" for x86_64/i686..., else the name itself."""
    arch = arch.lower()
    if arch.startswith(("aarch64", "arm")):
        return "arm"
    if arch in ("x86_64", "amd64") or (arch.startswith("i") and arch.endswith("86")):
        return "x86"
    return arch


def emulator() -> str | None:
    """"qemu-<arch>" when this userland's architecture is foreign to the kernel (qemu-user, via binfmt_misc).

    The kernel says its own architecture in /proc/sys/kernel/arch, which user-mode emulation leaves
    alone; on older kernels, an x86 /proc/cpuinfo ("vendor_id") under an ARM userland tells the same.
    A 32-bit ARM userland on a 64-bit ARM kernel (Raspberry Pi OS 32-bit) is native, not emulated.
    """
    user = platform.machine()
    kernel = _read("/proc/sys/kernel/arch")
    if kernel is None and _family(user) == "arm" and "\nvendor_id" in "\n" + (_read("/proc/cpuinfo") or ""):
        kernel = "x86_64"
    return f"qemu-{user}" if kernel and _family(kernel) != _family(user) else None


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        return platform.system()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int | None = None) -> dict:
    """CPU, memory, OS and library versions of this machine, as plain JSON types."""
    return {
        "hostname": socket.gethostname(),
        "board": _read("/proc/device-tree/model"),  # e.g. "Raspberry Pi 5 Model B Rev 1.0"
        "cpu_model": _cpu_model(),
        "arch": platform.machine(),
        "emulated": emulator(),  # e.g. "qemu-aarch64": timings are the emulator's, not this architecture's
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "threads": threads,
        "memory_total_bytes": psutil.virtual_memory().total,
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {
            "onnxruntime": _version("onnxruntime"),
            "numpy": _version("numpy"),
            "psutil": _version("psutil"),
            "llama_cpp": _version("llama-cpp-python"),
        },
    }
