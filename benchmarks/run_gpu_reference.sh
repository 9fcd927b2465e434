#!/usr/bin/env bash
# The GPU reference (issue 20; method in docs/gpu-reference.md), on the lent GPU machine:
# benchmarks/gpu_setup.sh installs the carried wheels and reassembles the default model's GGUF from its
# parts; `tensoredge compress` makes the compressed variant from it (PLAN, default: the demo plan; its
# calibration, if any, on the GPU); then benchmarks/gpu_reference.py measures both, dense and compressed,
# eager and with CUDA graphs, bf16 and fp16, batch 1 to 256, with NVML energy above the idle GPU.
#
#   benchmarks/run_gpu_reference.sh                     # about 4 minutes on an H200
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
WORK=$(mktemp -d /tmp/tensoredge-gpu-reference.XXXXXX)
echo "compressing $GGUF with $PLAN (log: compress.log)"
# shellcheck disable=SC2086 # a plan is several arguments
python3 -m toolkit.cli compress --model "$GGUF" $PLAN --device cuda --out "$WORK/compressed" \
    > "$RESULTS/compress.log" 2>&1 || { tail -5 "$RESULTS/compress.log"; exit 1; }
python3 benchmarks/gpu_reference.py --dense "$GGUF" --compressed "$WORK/compressed" --out "$RESULTS" "$@" \
    2>&1 | tee "$RESULTS/gpu-reference.log"
