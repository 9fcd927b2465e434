#!/usr/bin/env bash
# A minute's rehearsal on the lent GPU machine, run in the call that carries the first GGUF part: the
# same scripts as the real runs (benchmarks/gpu_heal.sh, gpu_reference.py, gpu_ship.sh) on the tiny
# random GPT-2, so that a CUDA-only fault, a package the image lacks or an ONNX Runtime version
# difference shows up before the real runs spend their minutes. Results in $OUT/smoke.
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
source benchmarks/gpu_setup.sh
python3 -c "import torch, transformers, tokenizers, onnxruntime, gguf; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, \
'onnxruntime', onnxruntime.__version__, 'cuda', torch.cuda.get_device_name(0))"
DEVICE=cuda MODEL=tiny-gpt2 WORK=/tmp/smoke OUT=$OUT/smoke PLANS="--fc svd-llm --remove 0.2" \
    HEALS="--data valid:0.5,generated=@gen0:0.5 --quant int4" GENS="1.0:0.95" GEN_TOKENS=20000 GEN_BATCH=64 \
    GEN_LENGTH=96 TRAIN_SECONDS=10 PROBE_SECONDS=5 HEAL_ARGS="--batch 4 --seq-len 128" EVAL_ARGS="--max-tokens 4096" \
    EXPORTS=plan0-heal0 benchmarks/gpu_heal.sh || { cat "$OUT"/smoke/summary.txt; tail -n 5 /tmp/smoke/logs/*.log; exit 1; }
cat "$OUT/smoke/summary.txt"
python3 benchmarks/gpu_reference.py --dense tiny-gpt2 --compressed /tmp/smoke/plan0-heal0/model --out "$OUT/smoke/ref" \
    --configs eager:fp32:1 graph:bf16:1,8 --budget-s 20 --idle-s 2 --loaded-idle-s 1 --window-s 0.5 2>&1 | tail -n 15
OUT=$OUT/smoke benchmarks/gpu_ship.sh /tmp/smoke/onnx-plan0-heal0 1 1
