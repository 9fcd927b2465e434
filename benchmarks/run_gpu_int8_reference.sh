#!/usr/bin/env bash
# The dense model's plain int8 on the full held-out texts, on the lent GPU (issue 17): the reference that
# a compressed file healed for int8 must beat, in both block sizes our exporter writes (32, the default,
# and 64), simulated bit-exactly by benchmarks/heal_eval.py. Three calls made back to back, as
# run_gpu_ship_session.sh's first three (the wheels and the GGUF's xz parts); the third runs the evaluation:
#
#   CALL 1  carry .whl .whl-hub .gguf-xz-3a   OUT=$OUT bash benchmarks/run_gpu_int8_reference.sh
#   CALL 2  carry .gguf-xz-3b                 (same command)
#   CALL 3  carry .gguf-xz-3c                 (same command): $OUT/eval-dense-<text>[-int8[-b64]].json
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
source benchmarks/gpu_setup.sh
[ -n "$GGUF" ] || exit 0
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
python3 benchmarks/heal_eval.py --reference smollm2-135m --model dense=smollm2-135m --device cuda \
    --quant int8,int8-b64 --quant-block 32 --out "$OUT" 2>&1 | grep -v "logging.cc" | tee "$OUT/eval.log"
