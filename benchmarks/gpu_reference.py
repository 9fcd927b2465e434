"""GPU reference: the default model, dense and compressed, decoded greedily by PyTorch on a CUDA GPU
in batches of 1 to 256, eager and with CUDA graphs, in bf16 and fp16; speed, per-token latency and
energy from NVML (whole board and above the GPU's idle power), as device_bench result rows.

    python benchmarks/gpu_reference.py --dense MODEL.gguf --compress "--embedding tt:ratio=2" --out DIR
    python benchmarks/gpu_reference.py --dense MODEL.gguf --compressed DIR --out DIR

On the lent GPU machine it runs as `benchmarks/run_gpu_reference.sh`, which installs the carried
wheels and reassembles the GGUF (about 5 minutes on an H200 in all). The method is in
docs/gpu-reference.md. `--device cpu` is a dry run of the same code on this host
(no CUDA graphs, no NVML: no energy). Written to --out: gpu-reference.json (every row in
`tensoredge.bench/1`, inside one `tensoredge.bench-set/1` file that `tensoredge report` reads, with
the parity checks, the idle power and the NVML trace) and gpu-reference.txt (the table printed
at the end). The JSON is rewritten after every row, so a run cut short keeps what it measured.

Order of work: NVML starts recording; `tensoredge compress` makes the compressed variant in a
subprocess (--compress) while the dense model loads on the CPU, then it loads too (the GPU settles
after whatever ran before); the untouched GPU's idle power is read (--idle-s); the GPU's power with the model
resident and nothing running is read (--loaded-idle-s, recorded only); then per variant and dtype:
the parity check (each fast path against eager on the same prompts), then the rows of --configs,
smallest batch first.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from device_bench.bench import SCHEMA, spread  # noqa: E402
from device_bench.energy.nvml import NvmlRecorder  # noqa: E402
from device_bench.energy.rapl import RaplMeter  # noqa: E402
from device_bench.energy.windows import above_idle, counter_update_hz, idle_power, window_joules  # noqa: E402
from device_bench.errors import BenchError, first_line  # noqa: E402
from device_bench.files import write_json  # noqa: E402
from device_bench.machine import machine_info  # noqa: E402
from models import DEFAULT_MODEL  # noqa: E402
from toolkit.errors import TensoredgeError  # noqa: E402
from toolkit.progress import say  # noqa: E402
from toolkit.report import BENCH_SET_SCHEMA, best_per_batch  # noqa: E402
from toolkit.table import text_table  # noqa: E402

CONFIGS = {  # PATH:DTYPE:BATCHES; eager fp32 at batch 1 is the reference as it ran before CUDA graphs
    "cuda": ["eager:fp32:1", "graph:bf16:1,8,64,256", "graph:fp16:1,8,64,256", "eager:bf16:1,8,64,256"],
    "cpu": ["eager:fp32:1,2", "static:fp32:1,2"],
}
PATH_NAMES = {"eager": "eager", "static": "static cache", "graph": "CUDA graphs", "compile": "torch.compile"}


def parse_configs(texts: list[str]) -> list[tuple[str, str, list[int]]]:
    """"graph:bf16:1,8,64" -> ("graph", "bf16", [1, 8, 64]); errors name the bad part."""
    from toolkit.static_decode import DTYPES, PATHS

    configs = []
    for text in texts:
        parts = text.split(":")
        if len(parts) != 3:
            raise TensoredgeError(f"--configs entry {text!r} is not PATH:DTYPE:BATCHES, e.g. graph:bf16:1,8,64")
        path, dtype, batches = parts
        if path not in PATHS:
            raise TensoredgeError(f"--configs {text!r}: unknown path {path!r} (choose {', '.join(PATHS)})")
        if dtype not in DTYPES:
            raise TensoredgeError(f"--configs {text!r}: unknown dtype {dtype!r} (choose {', '.join(DTYPES)})")
        try:
            sizes = [int(b) for b in batches.split(",")]
        except ValueError:
            raise TensoredgeError(f"--configs {text!r}: batch sizes must be integers, e.g. 1,8,64") from None
        if not sizes or min(sizes) < 1:
            raise TensoredgeError(f"--configs {text!r}: batch sizes must be >= 1")
        configs.append((path, dtype, sorted(sizes)))
    return configs


class Energy:
    """The GPU's NVML trace (when there is one), its idle power, and the host's RAPL counters."""

    def __init__(self, device: str, nvml_device: int):
        self.recorder, self.gpu, self.skipped = None, {}, []
        if device == "cuda":
            try:
                self.recorder = NvmlRecorder(nvml_device)
                self.gpu = self.recorder.start()
            except BenchError as e:
                self.recorder = None
                self.skipped.append({"meter": "nvml", "why": str(e)})
        else:
            self.skipped.append({"meter": "nvml", "why": "--device cpu: no GPU"})
        self.rapl = RaplMeter()
        self.rapl_why = self.rapl.available()
        self.idle: dict | None = None

    def mark(self) -> float:
        return self.recorder.mark() if self.recorder else time.perf_counter()

    def idle_window(self, t0: float, t1: float) -> dict | None:
        return idle_power(self.recorder.trace, t0, t1) if self.recorder else None

    def window(self, t0: float, t1: float, tokens: int) -> dict | None:
        """The result's "energy" for a measured window, or None without NVML."""
        if not self.recorder:
            return None
        trace = self.recorder.trace
        entry = above_idle(window_joules(trace, t0, t1), t1 - t0, self.idle["watts"] if self.idle else None, tokens)
        start = trace[0][0]
        return {"meter": "nvml", "kind": "measured", **entry,
                "power_limit_w": self.gpu.get("power_limit_w"),
                "samples": sum(1 for p in trace if t0 <= p[0] <= t1), "sample_hz": None,
                "counter_updates_per_s": counter_update_hz(trace, t0, t1),
                "window_s": [t0 - start, t1 - start], "source": self.recorder.source}

    def host_start(self) -> None:
        if self.rapl_why is None:
            self.rapl.start()

    def host_stop(self, tokens: int) -> dict:
        if self.rapl_why is not None:
            return {"meter": "rapl", "available": False, "why": self.rapl_why}
        reading = self.rapl.stop()
        return {"meter": "rapl", "available": True, "kind": "measured", "joules": reading.joules,
                "seconds": reading.seconds, "average_watts": reading.joules / reading.seconds,
                "joules_per_token": reading.joules / tokens, "source": self.rapl.source}

    def trace_json(self) -> dict | None:
        if not self.recorder:
            return None
        start = self.recorder.trace[0][0]
        return {"columns": ["seconds", "energy_mj", "power_mw"], "clock": "seconds since the first read",
                "samples": [[round(t - start, 6), mj, mw] for t, mj, mw in sorted(self.recorder.trace)]}


def start_compress(args, folder: Path, log: Path):
    """`tensoredge compress` of --dense with the --compress plan, in a subprocess beside the dense load."""
    if not args.compress:
        return None
    command = [sys.executable, "-m", "toolkit.cli", "compress", "--model", args.dense, *shlex.split(args.compress),
               "--device", args.device, "--out", str(folder)]
    say(f"compressing in a subprocess ({' '.join(command[1:])}; log: {log.name})")
    with open(log, "w") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO), folder


def finish_compress(compressing, log: Path) -> str | None:
    """Wait for the compress subprocess; its folder, or a one-line error with the log's last line."""
    if compressing is None:
        return None
    process, folder = compressing
    if process.wait() != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise TensoredgeError(f"tensoredge compress failed (exit status {process.returncode}): "
                              f"{lines[-1] if lines else 'no output'} (all of it in {log})")
    return str(folder)


def read_idle(energy: Energy, idle_s: float) -> dict | None:
    """The GPU's idle power: `idle_s` seconds of NVML reads with nothing running (before any CUDA work)."""
    if not energy.recorder or idle_s <= 0:
        return None
    say(f"idle GPU: {idle_s:g} s of NVML reads, nothing running")
    t0 = energy.mark()
    time.sleep(idle_s)
    return energy.idle_window(t0, energy.mark())


def measure(decoder, variant: str, dtype: str, batch: int, prompts, model, args, energy: Energy) -> dict:
    """Warm up, then whole generations for at least --window-s and --min-repeats; one result row."""
    import torch

    from toolkit.static_decode import generate

    prompt = prompts[:batch]
    for _ in range(args.warmup):
        generate(decoder, prompt, args.decode_tokens)
    t0 = energy.mark()
    energy.host_start()
    runs = []
    while len(runs) < args.min_repeats or time.perf_counter() - t0 < args.window_s:
        runs.append(generate(decoder, prompt, args.decode_tokens))  # returns with the device finished
    t1 = energy.mark()
    tokens = (args.prompt_tokens + args.decode_tokens) * batch * len(runs)
    host = energy.host_stop(tokens)
    steps = np.array([s for run in runs for s in run.step_s]) * 1e3
    decodes = [sum(run.step_s) for run in runs]
    prefills = [run.prefill_s for run in runs]
    p50, p95 = np.percentile(steps, [50, 95])
    cuda = prompt.device.type == "cuda"
    return {
        "schema": SCHEMA,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_path": f"torch+{prompt.device.type}:{variant}",
        "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "format": "pytorch",
        "runtime": {"name": "pytorch", "version": versions(), "path": decoder.path, "dtype": dtype,
                    "device": energy.gpu.get("name") or device_name(prompt), **decoder.describe()},
        "kv_cache": True,
        "threads": torch.get_num_threads(),
        "vocab_size": int(model.config.vocab_size),
        "batch_size": batch,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "repeats": len(runs),
        "warmup": args.warmup,
        "seed": args.seed,
        "load_s": None,
        "prefill_s": spread(prefills),
        "prefill_tokens_per_s": spread([args.prompt_tokens * batch / s for s in prefills]),
        "decode_s": spread(decodes),
        "decode_tokens_per_s": spread([args.decode_tokens * batch / s for s in decodes]),
        "decode_tokens_per_s_per_stream": spread([args.decode_tokens / s for s in decodes]),
        "decode_latency_ms": {"p50": float(p50), "p95": float(p95)},
        "peak_rss_sampled_bytes": None,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "generated_tokens": runs[0].tokens[0].tolist(),
        "window_seconds": t1 - t0,
        "energy": energy.window(t0, t1, tokens),
        "energy_skipped": energy.skipped,
        "host_energy": host,
        "emulated": None,
        "variant": variant,
    }


def versions() -> str:
    import torch
    import transformers

    cuda = f" cuda {torch.version.cuda}" if torch.version.cuda else ""
    return f"torch {torch.__version__}{cuda}, transformers {transformers.__version__}"


def device_name(tensor) -> str:
    import torch

    return torch.cuda.get_device_name(tensor.device) if tensor.device.type == "cuda" else "cpu"


def check_parity(model, anchor_model, paths: list[str], prompts, args) -> dict[str, dict]:
    """Each fast path against eager in the same dtype: free greedy tokens, and logits under teacher
    forcing, with eager float32 (`anchor_model`, None when `model` is float32) fed the same tokens
    to size the dtype's own rounding."""
    from toolkit.static_decode import generate, make_decoder, parity

    prompt = prompts[: args.parity_batch]
    batch, steps = len(prompt), args.decode_tokens
    reference = generate(make_decoder("eager", model, batch, args.prompt_tokens, steps), prompt, steps,
                         record_logits=True)
    anchor = None
    if anchor_model is not None:
        anchor = generate(make_decoder("eager", anchor_model, batch, args.prompt_tokens, steps), prompt, steps,
                          record_logits=True, force=reference.tokens)
    checks = {}
    for path in paths:
        decoder = make_decoder(path, model, batch, args.prompt_tokens, steps)
        free = generate(decoder, prompt, steps, record_logits=True)
        forced = generate(decoder, prompt, steps, record_logits=True, force=reference.tokens)
        checks[path] = {"reference": "eager (dynamic KV cache), same dtype and prompts; anchor: eager fp32",
                        **decoder.describe(), **parity(reference, free, forced, anchor)}
        del decoder, free, forced
    return checks


def parity_cell(check: dict | None) -> str:
    if check is None:
        return "-"
    if check.get("error"):
        return "error"
    verdict = "ok" if check["passed"] else "FAIL"
    tie = " (near-tie)" if check["passed"] and not check["tokens_equal"] else ""
    return f"{verdict}{tie} {check['max_abs_logit_diff']:.3g}/{check['tolerance']:.3g}"


class Run:
    """Everything the measuring loop shares: arguments, prompts, energy, results so far and the deadline."""

    def __init__(self, args, energy: Energy, started: float):
        self.args, self.energy, self.started = args, energy, started
        self.rows: list[dict] = []
        self.parity: list[dict] = []
        self.not_run: list[dict] = []
        self.header: dict = {}

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.args.budget_s

    def skip(self, variant: str, path: str, dtype: str, batches: list[int], why: str) -> None:
        for batch in batches:
            self.not_run.append({"variant": variant, "path": path, "dtype": dtype, "batch": batch, "why": why})
        say(f"{variant} {path} {dtype}: batch {', '.join(map(str, batches))} not run: {why}")

    def save(self) -> dict:
        best = [{"variant": v, "batch": b, "path": r["runtime"]["path"], "dtype": r["runtime"]["dtype"]}
                for (v, b), r in best_per_batch(self.rows).items()]
        result = {**self.header, "parity": self.parity, "runs": self.rows, "not_run": self.not_run,
                  "best_per_batch": best, "nvml_trace": self.energy.trace_json()}
        write_json(result, str(Path(self.args.out) / "gpu-reference.json"))
        return result


def run_variant(run: Run, variant: str, loaded, plan: dict, configs, prompts) -> None:
    """Parity, then every configured row of one model, dtype by dtype."""
    import torch

    from toolkit.static_decode import DTYPES, kv_cache_bytes, make_decoder

    args, device = run.args, prompts.device
    for dtype in dict.fromkeys(d for _, d, _ in configs):
        model = copy.deepcopy(loaded.model).to(device=device, dtype=DTYPES[dtype])  # one dtype resident at a time
        fast = list(dict.fromkeys(p for p, d, _ in configs if d == dtype and p != "eager"))
        if fast and not run.over_budget():
            say(f"{variant} {dtype}: parity of {', '.join(fast)} against eager (batch {args.parity_batch})")
            try:
                anchor_model = None if dtype == "fp32" else copy.deepcopy(loaded.model).to(device)
                checks = check_parity(model, anchor_model, fast, prompts, args)
                anchor_model = None
            except Exception as e:  # e.g. a capture that failed: recorded and said, and the rows still run
                checks = {p: {"error": f"{type(e).__name__}: {first_line(e)}"} for p in fast}
                say(f"{variant} {dtype}: parity check failed to run: {type(e).__name__}: {first_line(e)}")
            for path, check in checks.items():
                run.parity.append({"variant": variant, "path": path, "dtype": dtype, **check})
                if "passed" in check:
                    say(f"{variant} {path} {dtype}: parity {parity_cell(check)}")
        for path, d, batches in configs:
            if d != dtype:
                continue
            check = next((c for c in run.parity if (c["variant"], c["path"], c["dtype"]) == (variant, path, dtype)),
                         None)
            for i, batch in enumerate(batches):
                if run.over_budget():
                    run.skip(variant, path, dtype, batches[i:], f"time budget (--budget-s {args.budget_s:g}) spent")
                    break
                need = kv_cache_bytes(model.config, batch, args.prompt_tokens + args.decode_tokens, DTYPES[dtype])
                if device.type == "cuda" and need > torch.cuda.mem_get_info()[0] // 2:
                    run.skip(variant, path, dtype, batches[i:], f"memory: the KV cache needs {need / 2**30:.1f} GiB")
                    break
                say(f"{variant} {PATH_NAMES[path]} {dtype} batch {batch}")
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    decoder = make_decoder(path, model, batch, args.prompt_tokens, args.decode_tokens)
                    row = measure(decoder, variant, dtype, batch, prompts, model, args, run.energy)
                except torch.cuda.OutOfMemoryError as e:
                    run.skip(variant, path, dtype, batches[i:], f"out of memory at batch {batch}: {first_line(e)}")
                    break
                except Exception as e:  # recorded under not_run; the other configurations still run
                    run.skip(variant, path, dtype, batches[i:],
                             f"failed at batch {batch}: {type(e).__name__}: {first_line(e)}")
                    break
                finally:
                    decoder = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                row["plan"] = plan
                row["parity"] = check
                run.rows.append(row)
                run.save()
                say(summary_line(row))
                if row["decode_latency_ms"]["p50"] > args.max_step_ms and i + 1 < len(batches):
                    run.skip(variant, path, dtype, batches[i + 1:],
                             f"latency: p50 {row['decode_latency_ms']['p50']:.0f} ms per token at batch {batch} "
                             f"is over --max-step-ms {args.max_step_ms:g}")
                    break
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()


def summary_line(row: dict) -> str:
    e = row.get("energy") or {}
    joules = f", {e['joules_per_token']:.4f} J/token" if e else ""
    return (f"  {row['decode_tokens_per_s']['median']:.0f} tok/s in all, "
            f"p50 {row['decode_latency_ms']['p50']:.2f} ms per token{joules}")


HEADERS = ["variant", "path", "dtype", "batch", "TTFT ms", "tok/s/stream", "tok/s total", "p50/p95 ms",
           "board W", "J/tok board", "J/tok >idle", "GPU mem", "parity"]


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        e = r.get("energy") or {}
        memory = r.get("peak_gpu_memory_bytes")
        out.append([
            r["variant"], PATH_NAMES[r["runtime"]["path"]], r["runtime"]["dtype"], str(r["batch_size"]),
            f"{r['prefill_s']['median'] * 1e3:.1f}",
            f"{r['decode_tokens_per_s_per_stream']['median']:.1f}",
            f"{r['decode_tokens_per_s']['median']:.0f}",
            f"{r['decode_latency_ms']['p50']:.2f}/{r['decode_latency_ms']['p95']:.2f}",
            f"{e['average_watts']:.0f}" if e else "-",
            f"{e['joules_per_token']:.4f}" if e else "-",
            f"{e['joules_per_token_above_idle']:.4f}" if e.get("joules_per_token_above_idle") is not None else "-",
            f"{memory / 2**30:.1f} GiB" if memory else "-",
            parity_cell(r.get("parity")),
        ])
    return out


def report_text(result: dict, args) -> str:
    gpu, idle = result["gpu"], result["gpu"].get("idle")
    lines = [f"GPU reference: {result['machine']['cpu_model']} host; {gpu.get('name') or 'no GPU (dry run)'}"
             + (f", power limit {gpu['power_limit_w']:.0f} W" if gpu.get("power_limit_w") else "")
             + (f", driver {gpu['driver_version']}" if gpu.get("driver_version") else ""),
             f"{result['versions']}; {args.prompt_tokens}-token random prompts, {args.decode_tokens} greedy steps; "
             f"each row: {args.warmup} warm-up generation(s), then generations for at least {args.window_s:g} s "
             f"and {args.min_repeats} repeats (medians over them)"]
    if idle:
        reads = idle["power_reads_w"]
        lines.append(f"GPU idle (before any CUDA work, {idle['seconds']:.0f} s): {idle['watts']:.1f} W from the "
                     f"energy counter; power reads {reads['min']:.1f}-{reads['max']:.1f} W")
    loaded = gpu.get("loaded_idle")
    if loaded:
        lines.append(f"GPU with the CUDA context and the dense model resident, nothing running ({loaded['seconds']:.0f} s): "
                     f"{loaded['watts']:.1f} W (not subtracted)")
    host = result["host_energy"]
    lines.append("Host CPU energy (RAPL): " + ("measured per row (host_energy in the JSON)" if host["available"]
                                               else f"unavailable: {host['why']}"))
    lines += ["J/token: board energy over each row's measured window / (prompt + decoded tokens of all streams); "
              ">idle subtracts the idle power x the window's length. Parity: max |logit diff| / tolerance "
              "against eager in the same dtype.", ""]
    lines.append(text_table(HEADERS, table_rows(result["runs"])))
    best = [f"{b['variant']} batch {b['batch']}: {PATH_NAMES[b['path']]} {b['dtype']}"
            for b in result["best_per_batch"]]
    if best:
        lines += ["", "Lowest whole-board J/token per batch size (parity passed): " + "; ".join(best)]
    for n in result["not_run"]:
        lines.append(f"not run: {n['variant']} {n['path']} {n['dtype']} batch {n['batch']}: {n['why']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", default=DEFAULT_MODEL, help="the dense model (name, .gguf, folder; default %(default)s)")
    p.add_argument("--compressed", help="a compressed folder from `tensoredge compress` (default: dense only)")
    p.add_argument("--compress", metavar="PLAN", help="make the compressed variant from --dense with "
                   "`tensoredge compress PLAN --device DEVICE` in a subprocess while the dense model loads, e.g. "
                   "--compress '--embedding tt:ratio=2 --mlp svd:ratio=1.25' (instead of --compressed)")
    p.add_argument("--out", default="tensoredge-out/gpu-reference")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    p.add_argument("--configs", nargs="+", help="PATH:DTYPE:BATCHES entries (paths eager, static, graph, compile; "
                   f"dtypes fp32, bf16, fp16); default on cuda: {' '.join(CONFIGS['cuda'])}")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--window-s", type=float, default=2.0, help="least seconds of measured generations per row")
    p.add_argument("--min-repeats", type=int, default=2, help="least measured generations per row")
    p.add_argument("--warmup", type=int, default=1, help="generations before each row's measured window")
    p.add_argument("--parity-batch", type=int, default=8)
    p.add_argument("--idle-s", type=float, default=12.0,
                   help="seconds of idle GPU power, after loading on the CPU and before any CUDA work")
    p.add_argument("--loaded-idle-s", type=float, default=5.0,
                   help="seconds of GPU power with the models resident and nothing running (recorded only)")
    p.add_argument("--max-step-ms", type=float, default=100.0,
                   help="no larger batch once the p50 per-token latency is over this")
    p.add_argument("--budget-s", type=float, default=270.0, help="start no new row after this many seconds")
    p.add_argument("--nvml-device", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()
    configs = parse_configs(args.configs or CONFIGS[args.device])
    for name in ("prompt_tokens", "decode_tokens", "min_repeats", "parity_batch"):
        if getattr(args, name) < 1:
            raise TensoredgeError(f"--{name.replace('_', '-')} must be >= 1")
    if args.compress and args.compressed:
        raise TensoredgeError("give --compressed DIR or --compress PLAN, not both")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TensoredgeError(f"--out {out} is a file: give a folder")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise TensoredgeError("--device cuda, but torch sees no CUDA GPU: use --device cpu for a dry run")
    if args.threads:
        torch.set_num_threads(args.threads)
    from toolkit.checkpoint import open_model

    out.mkdir(parents=True, exist_ok=True)
    energy = Energy(args.device, args.nvml_device)  # recording from here: the trace shows the GPU settle
    with tempfile.TemporaryDirectory(prefix="tensoredge-gpu-reference-") as work:
        compressing = start_compress(args, Path(work) / "compressed", out / "compress.log")
        say(f"loading {args.dense} on the CPU")
        try:
            variants = [("dense", open_model(args.dense), {})]
        except BaseException:
            if compressing:  # ours: stop it before its folder goes away
                compressing[0].kill()
                compressing[0].wait()
            raise
        compressed = finish_compress(compressing, out / "compress.log") or args.compressed
        if compressed:
            from toolkit.checkpoint import read_manifest

            say(f"loading {compressed} on the CPU")
            variants.append(("compressed", open_model(compressed), read_manifest(compressed)["plan"]))
    energy.idle = read_idle(energy, args.idle_s)
    if energy.idle:
        say(f"idle GPU: {energy.idle['watts']:.1f} W")
    device = torch.device(args.device)
    vocab = min(int(loaded.model.config.vocab_size) for _, loaded, _ in variants)
    biggest = max(b for _, _, batches in configs for b in batches)
    rng = np.random.default_rng(args.seed)
    prompts = torch.from_numpy(rng.integers(0, vocab, size=(max(biggest, args.parity_batch), args.prompt_tokens)))
    prompts = prompts.to(device)

    run = Run(args, energy, started)
    run.header = {
        "schema": BENCH_SET_SCHEMA,
        "title": "GPU reference (benchmarks/gpu_reference.py)",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/gpu_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": versions(),
        "machine": machine_info(torch.get_num_threads()),
        "gpu": {**energy.gpu, "idle": energy.idle},
        "host_energy": {"meter": "rapl", "available": energy.rapl_why is None, "why": energy.rapl_why},
        "settings": {k: getattr(args, k) for k in ("prompt_tokens", "decode_tokens", "window_s", "min_repeats",
                                                    "warmup", "parity_batch", "idle_s", "max_step_ms", "budget_s")}
        | {"configs": [f"{p}:{d}:{','.join(map(str, b))}" for p, d, b in configs]},
    }
    if energy.recorder and args.loaded_idle_s > 0:
        resident = copy.deepcopy(variants[0][1].model).to(device)  # nothing running: what a server idles at
        torch.cuda.synchronize()
        t0 = energy.mark()
        time.sleep(args.loaded_idle_s)
        run.header["gpu"]["loaded_idle"] = energy.idle_window(t0, energy.mark())
        del resident
        torch.cuda.empty_cache()
        say(f"GPU with the model resident, nothing running: {run.header['gpu']['loaded_idle']['watts']:.1f} W")
    for variant, loaded, plan in variants:
        run_variant(run, variant, loaded, plan, configs, prompts)
    if energy.recorder:
        energy.recorder.stop()
    result = run.save()
    text = report_text(result, args)
    (out / "gpu-reference.txt").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    try:
        main()
    except (TensoredgeError, BenchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
