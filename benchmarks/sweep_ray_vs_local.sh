#!/usr/bin/env bash
# The same small FC sweep of the default model three ways on this machine: in-process (torch's
# threads), through `--ray local` with one CPU per point (points side by side) and with all CPUs
# per point. Run it on a quiet machine; it prints each run's wall time from the sweeps' own JSON
# and checks that the three agree point for point.
#
#   benchmarks/sweep_ray_vs_local.sh [OUT]   # default /tmp/sweep-ray-vs-local; about 15 minutes on 2 cores
set -euo pipefail
OUT=${1:-/tmp/sweep-ray-vs-local}
TE=${TE:-.venv/bin/tensoredge}
CPUS=$(nproc)
GRID=(--model smollm2-135m --max-tokens 1024 --calibration-tokens 2048 --methods svd
      --allocs uniform,surgical --removals 0.1,0.2 --hopeless inf)
mkdir -p "$OUT"
for run in local ray1 "ray$CPUS"; do
    rm -rf "${OUT:?}/$run"
    case $run in
        local) extra=() ;;
        ray1) extra=(--ray local --task-cpus 1) ;;
        *) extra=(--ray local --task-cpus "$CPUS") ;;
    esac
    /usr/bin/time -f "%e" -o "$OUT/$run.time" "$TE" sweep fc "${GRID[@]}" "${extra[@]}" --out "$OUT/$run" \
        > "$OUT/$run.log" 2>&1
done
python3 - "$OUT" local ray1 "ray$CPUS" <<'EOF'
import json, platform, sys
from pathlib import Path

out, runs = Path(sys.argv[1]), sys.argv[2:]
rows = {r: json.loads((out / r / "fc-sweep.json").read_text()) for r in runs}
print(f"machine: {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs")
print(f"{'run':<8} {'runner':<58} {'sweep s':>8} {'process s':>10}")
for r, d in rows.items():
    print(f"{r:<8} {d['runner']:<58} {d['wall_seconds']:>8.0f} {float((out / f'{r}.time').read_text()):>10.0f}")
ref = {p["id"]: p.get("perplexity") for p in rows[runs[0]]["rows"]}
for r in runs[1:]:
    other = {p["id"]: p.get("perplexity") for p in rows[r]["rows"]}
    worst = max(abs(other[k] - v) / v for k, v in ref.items())
    print(f"{r}: {len(other)} points, largest relative perplexity difference from in-process {worst:.2e}")
EOF
