#!/usr/bin/env bash
# The GPU reference (issue 20; method in docs/gpu-reference.md), on the lent GPU machine:
# benchmarks/gpu_setup.sh installs the carried wheels and reassembles the default model's GGUF from its
# parts; then benchmarks/gpu_reference.py runs `tensoredge compress` on it in a subprocess (PLAN, default:
# the demo plan; calibration, if the plan has any, on the GPU) while it loads the dense model, and
# measures both: eager and with CUDA graphs, bf16 and fp16, batch 1 to 256, NVML energy above the idle GPU.
#
#   benchmarks/run_gpu_reference.sh                     # about 5 minutes on an H200
#   PLAN="--fc svd-llm --remove 0.2" benchmarks/run_gpu_reference.sh --budget-s 200
#
# Arguments go to gpu_reference.py. Nothing else may run on the GPU meanwhile: its power is measured.
# Results in $OUT (5 files): gpu-reference.json (every row, tensoredge.bench-set/1), gpu-reference.txt
# (the table), gpu-reference.log (everything printed), compress.log, nvidia-smi.txt.
set -euo pipefail
source benchmarks/gpu_setup.sh
: "${GGUF:?the GGUF parts are not all here yet: carry .gguf-parts/ part by part, in calls made back to back}"
RESULTS=${OUT:-tensoredge-out/gpu-reference}
PLAN=${PLAN:---embedding tt:ratio=2 --mlp svd:ratio=1.25}  # models/smollm2_135m.py demo_plan
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,pstate,temperature.gpu,memory.used \
    --format=csv > "$RESULTS/nvidia-smi.txt"
cat "$RESULTS/nvidia-smi.txt"
python3 benchmarks/gpu_reference.py --dense "$GGUF" --compress "$PLAN" --out "$RESULTS" "$@" \
    2>&1 | tee "$RESULTS/gpu-reference.log"
