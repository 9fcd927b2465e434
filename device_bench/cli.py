"""Command line: `python -m device_bench MODEL_FILE [options]`."""

import argparse
import os
import sys

from device_bench.bench import run_bench
from device_bench.energy import METERS
from device_bench.errors import BenchError, first_line
from device_bench.files import check_output, write_json
from device_bench.interrupt import run_command
from device_bench.remote import add_remote_arguments, bench_argv_from, run_remote
from device_bench.profiles import BOARDS, NAMES


DESCRIPTION = ("Benchmark a tensoredge ONNX export (onnxruntime) or .gguf (llama-cpp-python) model on this "
               "machine: load time, prefill and greedy-decode speed, latency and peak memory.")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options, shared by `python -m device_bench` and `tensoredge bench`."""
    p.add_argument("model", metavar="MODEL_FILE", help="an ONNX export directory, a .onnx/.ort file, or a .gguf file")
    p.add_argument("--prompt-tokens", type=int, default=64, help="random prompt length (default: 64)")
    p.add_argument("--decode-tokens", type=int, default=32, help="greedy decode steps per run (default: 32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt (default: 0)")
    p.add_argument("--json", metavar="OUT", help="also write the full result as JSON to OUT")
    p.add_argument("--meter", choices=("auto", *METERS), default="auto",
                   help="energy meter for the measured runs; auto takes the first available of "
                        "rapl, hwmon, pi5-pmic, nvml (with --nvml-device), csv (with --energy-csv), "
                        "estimate (default: auto)")
    p.add_argument("--profile", choices=NAMES,
                   help="device profile for the energy estimate (default: the emulated or detected board, "
                        "else generic)")
    p.add_argument("--emulate", choices=tuple(BOARDS), metavar="BOARD",
                   help=f"hold the run to a board's cores (threads, CPU affinity) and RAM (an address-space "
                        f"cap above what the runner maps before loading): {', '.join(BOARDS)}")
    p.add_argument("--memory-cap-mib", type=int, metavar="N",
                   help="with --emulate, cap memory at N MiB instead of the board's RAM (for tests)")
    p.add_argument("--energy-csv", metavar="FILE",
                   help="an external meter's CSV log (unix-seconds timestamps and watts) for --meter csv")
    p.add_argument("--energy-csv-columns", nargs=2, default=["timestamp", "watts"], metavar=("TIME", "WATTS"),
                   help="the log's time and watts columns (default: timestamp watts)")
    p.add_argument("--nvml-device", type=int, metavar="N", help="NVIDIA GPU index for --meter nvml (default: 0)")
    add_remote_arguments(p)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m device_bench", description=DESCRIPTION,
                                epilog="Also: python -m device_bench generate EXPORT --prompt TEXT; "
                                       "python -m device_bench materialize CONTAINER OUT.")
    add_bench_arguments(p)
    return p.parse_args(argv)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_table(r: dict) -> str:
    def rate(key: str) -> str:
        s = r[key]
        return f"{s['median']:.1f} tok/s  (min {s['min']:.1f}, max {s['max']:.1f})"

    lat, e = r["decode_latency_ms"], r["energy"]
    prefill_ms = r["prefill_s"]["median"] * 1e3
    rows = [
        ("model", f"{os.path.basename(r['model_path'])}  ({r['format']}, {mib(r['model_bytes'])})"),
        ("runtime", f"{r['runtime']['name']} {r['runtime']['version']}, kv_cache={r['kv_cache']}"),
        ("threads", str(r["threads"])),
        ("load", f"{r['load_s']:.3f} s"),
        (f"prefill ({r['prompt_tokens']} tok)", f"{prefill_ms:.3g} ms, {rate('prefill_tokens_per_s')}"),
        (f"decode ({r['decode_tokens']} tok)", rate("decode_tokens_per_s")),
        ("token latency", f"p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms"),
        ("peak RSS", f"{mib(r['peak_rss_sampled_bytes'])} sampled, {mib(r['peak_rss_os_bytes'])} OS"),
        ("runs", f"{r['repeats']} measured + {r['warmup']} warmup"),
        ("CPU", f"{r['cpu_utilisation']:.0%} of {r['threads']} threads"),
        ("energy", f"{e['joules_per_token']:.3g} J/token, {e['average_watts']:.2f} W ({e['meter']}, {e['kind']})"),
    ]
    if r["energy_skipped"]:
        rows.append(("meters skipped", ", ".join(s["meter"] for s in r["energy_skipped"])))
    if r["machine"].get("emulated"):
        rows.append(("architecture", f"{r['machine']['arch']} under {r['machine']['emulated']}: "
                                     "timings are the emulator's, not a board's"))
    if r["emulated"]:
        em = r["emulated"]
        rows.append(("emulated", f"{em['profile']}: {em['threads']} threads, cores {em['affinity']}, "
                                 f"memory cap {mib(em['memory_cap_bytes'])}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 on success, 2 on a BenchError (printed as one line)."""
    args = parse_args(argv)

    def body() -> int:
        try:
            bench(args)
        except BenchError as e:
            print(f"error: {first_line(e)}", file=sys.stderr)
            return 2
        return 0

    return run_command(body)


def bench(args: argparse.Namespace) -> dict:
    """Run the bench the parsed options describe (here, or on --remote over SSH), print its table,
    write --json; return the result."""
    if args.json:  # an unwritable or precious --json path fails now, not after the runs
        check_output(args.json, "json", inputs=[args.model], flag="--json")
    if args.remote:
        parser = argparse.ArgumentParser()
        add_bench_arguments(parser)
        return run_remote(args, bench_argv_from(parser, args))
    result = run_bench(
        args.model,
        prompt_tokens=args.prompt_tokens,
        decode_tokens=args.decode_tokens,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        meter=args.meter,
        profile=args.profile,
        emulate=args.emulate,
        energy_csv=args.energy_csv,
        energy_csv_columns=tuple(args.energy_csv_columns),
        nvml_device=args.nvml_device,
        memory_cap_mib=args.memory_cap_mib,
    )
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return result
