#!/usr/bin/env bash
# On the lent GPU machine (no network, no package index): install the carried wheels, reassemble
# the default model's GGUF from parts carried by earlier calls into /tmp/parts, and run
# benchmarks/gpu_reference.py. The working tree may carry at most 64 MiB, hence the parts.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
mkdir -p /tmp/parts && cp .gguf-parts/* /tmp/parts/ 2>/dev/null || true
cat /tmp/parts/smollm2.gguf.part-* > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
python3 benchmarks/gpu_reference.py --gguf /tmp/SmolLM2-135M-Instruct.Q4_1.gguf --out "$OUT/gpu" "$@"
