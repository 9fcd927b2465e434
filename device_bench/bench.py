"""Time load, prefill and greedy decode of one model file."""

import os
import sys
import time
from datetime import datetime, timezone

import numpy as np
import psutil

from device_bench.errors import BenchError
from device_bench.machine import machine_info
from device_bench.memory import PeakRSS
from device_bench.runtimes import Runtime, runtime_class

SCHEMA = "tensoredge.bench/1"


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


def run_bench(
    path: str,
    prompt_tokens: int = 64,
    decode_tokens: int = 32,
    threads: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> dict:
    """Benchmark a .onnx or .gguf file on this machine; return a `tensoredge.bench/1` dict."""
    if threads is None:
        threads = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    for name, value, low in [
        ("prompt_tokens", prompt_tokens, 1),
        ("decode_tokens", decode_tokens, 1),
        ("threads", threads, 1),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
    ]:
        if value < low:
            raise BenchError(f"{name} must be >= {low}, got {value}")
    timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")

    runtime = runtime_class(path)  # fail fast on a missing or unsupported file

    with PeakRSS() as mem:
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
        for i in range(repeats):
            runs.append(generate(rt, prompt, decode_tokens))
            prefill_s, steps, _ = runs[-1]
            log(
                f"run {i + 1}/{repeats}: prefill {prompt_tokens / prefill_s:.1f} tok/s, "
                f"decode {decode_tokens / sum(steps):.1f} tok/s"
            )

    prefills = [prefill_s for prefill_s, _, _ in runs]
    decodes = [sum(steps) for _, steps, _ in runs]
    latencies = [s for _, steps, _ in runs for s in steps]
    p50, p95 = np.percentile(np.array(latencies) * 1e3, [50, 95])
    return {
        "schema": SCHEMA,
        "timestamp": timestamp,
        "model_path": os.path.abspath(path),
        "model_bytes": os.path.getsize(path),
        "format": os.path.splitext(path)[1].lower().lstrip("."),
        "runtime": {"name": rt.name, "version": rt.version},
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
        "machine": machine_info(threads),
    }
