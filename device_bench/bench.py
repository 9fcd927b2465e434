"""Time load, prefill and greedy decode of one model file."""

import os
import re
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
import psutil

from device_bench.context import check_context, file_context
from device_bench.energy import open_meter
from device_bench.energy.meter import Meter, Reading
from device_bench.errors import BenchError, first_line
from device_bench.machine import machine_info
from device_bench.memory import PeakRSS
from device_bench.onnx_lm import model_file
from device_bench.profiles import detect_profile, emulate as apply_emulation, get_profile
from device_bench.runtimes import Runtime, runtime_class
from device_bench.runtimes.genai import genai_model_file, is_genai_ref
from device_bench.runtimes.torch_ref import is_torch_ref

SCHEMA = "tensoredge.bench/1"
OUT_OF_MEMORY = re.compile(r"alloc|memory|can't start new thread", re.IGNORECASE)  # e.g. std::bad_alloc


def log(msg: str) -> None:
    print(f"[device_bench] {msg}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def generate(rt: Runtime, prompt: np.ndarray, steps: int) -> tuple[float, list[float], list[int]]:
    """Prefill `prompt`, then run `steps` greedy decode steps.

    Returns prefill seconds, seconds of each decode step, and the token fed to each step
    (token i is the argmax of the logits before step i).
    """
    rt.reset()
    t0 = time.perf_counter()
    logits = rt.prefill(prompt)
    prefill_s = time.perf_counter() - t0
    latencies, tokens = [], []
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        t0 = time.perf_counter()
        logits = rt.decode_step(tokens[-1])
        latencies.append(time.perf_counter() - t0)
    return prefill_s, latencies, tokens


def energy_entry(meter: Meter, reading: Reading, tokens: int) -> dict:
    """The result's "energy"; `tokens`: every prompt and decoded token of the measured runs."""
    return {
        "meter": meter.name,
        "kind": meter.kind,
        "joules": reading.joules,
        "seconds": reading.seconds,
        "average_watts": reading.joules / reading.seconds,
        "joules_per_token": reading.joules / tokens,
        "samples": reading.samples,
        "sample_hz": reading.sample_hz,
        "source": meter.source,
    }


def out_of_memory(e: Exception, model_bytes: int) -> bool:
    """Whether `e` means this capped process ran out of address space.

    True for a MemoryError, an error that says so, or any error once the model file no longer fits
    under the cap (llama.cpp's failed mmap says only "Failed to load model from file").
    """
    headroom = resource.getrlimit(resource.RLIMIT_AS)[0] - psutil.Process().memory_info().vms
    return isinstance(e, MemoryError) or bool(OUT_OF_MEMORY.search(first_line(e))) or model_bytes > headroom


@contextmanager
def out_of_memory_errors(emulated: dict | None, model_bytes: int) -> Iterator[None]:
    """Under an emulated memory cap, turn running out of memory into one clear BenchError."""
    try:
        yield
    except Exception as e:  # MemoryError, or a runtime's own error (often already a BenchError)
        if emulated is None or not out_of_memory(e, model_bytes):
            raise
        cap = emulated["memory_cap_bytes"] / 2**20
        raise BenchError(
            f"model needs more memory than the emulated {emulated['profile']} has ({cap:.0f} MiB): {first_line(e)}"
        ) from None


def run_bench(
    path: str,
    prompt_tokens: int = 64,
    decode_tokens: int = 32,
    threads: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    meter: str = "auto",
    profile: str | None = None,
    emulate: str | None = None,
    energy_csv: str | None = None,
    energy_csv_columns: tuple[str, str] = ("timestamp", "watts"),
    nvml_device: int | None = None,
    memory_cap_mib: int | None = None,
) -> dict:
    """Benchmark a .onnx/.ort/.gguf file or an ONNX export directory on this machine; return a `tensoredge.bench/1` dict.

    `meter` (see device_bench.energy) measures the measured repetitions only, not load or warm-up;
    "energy" gives its joules, average watts and joules_per_token, where the tokens are every
    prompt and decoded token of the measured runs: (prompt_tokens + decode_tokens) * repeats.
    The estimator uses `profile`, else the emulated board, else the board this runs on, else generic.
    `emulate` holds this whole process to a board's cores and RAM (`memory_cap_mib` overrides the
    RAM) for good, so call it in a process of its own, as `python -m device_bench` is.
    """
    target = get_profile(emulate) if emulate else None  # the board to emulate
    if threads is None:
        threads = target.threads if target else psutil.cpu_count(logical=False) or os.cpu_count() or 1
    optional = [("nvml_device", nvml_device, 0), ("memory_cap_mib", memory_cap_mib, 1)]
    for name, value, low in [
        ("prompt_tokens", prompt_tokens, 1),
        ("decode_tokens", decode_tokens, 1),
        ("threads", threads, 1),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
        *[(name, value, low) for name, value, low in optional if value is not None],
    ]:
        if value < low:
            raise BenchError(f"{name} must be >= {low}, got {value}")
    if target and threads > target.cores:
        raise BenchError(f"{threads} threads is more than the emulated {target.name}'s {target.cores} cores")
    if memory_cap_mib is not None and not target:
        raise BenchError("memory_cap_mib (--memory-cap-mib) only applies with emulate (--emulate BOARD)")
    timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")

    runtime = runtime_class(path)  # fail fast on a missing or unsupported file
    check_context(prompt_tokens + decode_tokens, None if is_torch_ref(path) else file_context(path),
                  f"prompt + decode ({prompt_tokens} + {decode_tokens})",
                  "lower --prompt-tokens or --decode-tokens")
    machine = machine_info(threads)
    estimate_profile = (get_profile(profile) if profile
                        else target or detect_profile(machine["board"]) or get_profile("generic"))
    energy_meter, skipped = open_meter(meter, estimate_profile, energy_csv, energy_csv_columns, nvml_device)
    for s in skipped:
        log(f"energy meter {s['meter']} skipped: {s['why']}")
    log(f"energy meter: {energy_meter.name} ({energy_meter.kind})")
    emulated = None
    if target:
        emulated = apply_emulation(target, threads, memory_cap_mib * 2**20 if memory_cap_mib else None)
        log(f"emulating {target.name}: cores {emulated['affinity']}, "
            f"memory cap {emulated['memory_cap_bytes'] / 2**20:.0f} MiB")

    if is_genai_ref(path):
        model_path = genai_model_file(path)
    else:
        model_path = path if is_torch_ref(path) or not os.path.isdir(path) else str(model_file(path))
    file_bytes = 0 if is_torch_ref(path) else os.path.getsize(model_path)
    with out_of_memory_errors(emulated, file_bytes), PeakRSS() as mem:
        log(f"loading {path} ({threads} threads)")
        t0 = time.perf_counter()
        rt = runtime(path, threads, max_tokens=prompt_tokens + decode_tokens)
        load_s = time.perf_counter() - t0
        log(f"loaded with {rt.name} {rt.version} in {load_s:.3f} s")
        prompt = np.random.default_rng(seed).integers(0, rt.vocab_size, size=prompt_tokens, dtype=np.int64)
        for i in range(warmup):
            log(f"warmup {i + 1}/{warmup}")
            generate(rt, prompt, decode_tokens)
        runs = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        energy_meter.start()
        for i in range(repeats):
            runs.append(generate(rt, prompt, decode_tokens))
            prefill_s, steps, _ = runs[-1]
            log(
                f"run {i + 1}/{repeats}: prefill {prompt_tokens / prefill_s:.1f} tok/s, "
                f"decode {decode_tokens / sum(steps):.1f} tok/s"
            )
        reading = energy_meter.stop()
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0

    prefills = [prefill_s for prefill_s, _, _ in runs]
    decodes = [sum(steps) for _, steps, _ in runs]
    latencies = [s for _, steps, _ in runs for s in steps]
    p50, p95 = np.percentile(np.array(latencies) * 1e3, [50, 95])
    return {
        "schema": SCHEMA,
        "timestamp": timestamp,
        "model_path": path if is_torch_ref(path) or is_genai_ref(path) else os.path.abspath(path),
        "model_bytes": getattr(rt, "model_bytes", file_bytes),  # PyTorch: parameter bytes, no file
        "format": "pytorch" if is_torch_ref(path) else os.path.splitext(model_path)[1].lower().lstrip("."),
        "runtime": {"name": rt.name, "version": rt.version, "device": getattr(rt, "device_name", "cpu")},
        "kv_cache": rt.kv_cache,
        "threads": threads,
        "vocab_size": rt.vocab_size,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "load_s": load_s,
        "prefill_s": spread(prefills),
        "prefill_tokens_per_s": spread([prompt_tokens / s for s in prefills]),
        "decode_s": spread(decodes),
        "decode_tokens_per_s": spread([decode_tokens / s for s in decodes]),
        "decode_latency_ms": {"p50": float(p50), "p95": float(p95)},
        "peak_rss_sampled_bytes": mem.peak_sampled_bytes,
        "peak_rss_os_bytes": mem.peak_os_bytes,
        "generated_tokens": runs[0][2],
        "machine": machine,
        "energy": energy_entry(energy_meter, reading, (prompt_tokens + decode_tokens) * repeats),
        "energy_skipped": skipped,
        "cpu_utilisation": cpu_s / wall_s / threads,
        "emulated": emulated,
    }
