#!/usr/bin/env bash
# On the lent GPU machine: benchmarks/gpu_setup.sh installs the carried wheels and reassembles the
# default model's GGUF from its parts; then benchmarks/gpu_reference.py runs.
set -euo pipefail
source benchmarks/gpu_setup.sh
: "${GGUF:?the GGUF parts are not all here yet: carry .gguf-parts/ part by part, in calls made back to back}"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
python3 benchmarks/gpu_reference.py --gguf "$GGUF" --out "$OUT/gpu" "$@"
