#!/usr/bin/env bash
# Healing the default model on a CUDA GPU (issue 9). On the lent GPU machine, benchmarks/gpu_setup.sh
# installs the carried wheels and reassembles the default model's GGUF from its carried parts. Then:
# compress it with each of PLANS, and heal each compressed model with each of HEALS (TT-LoRA on
# WikiText-2 valid; perplexity before/after on WikiText-2 test). The heal runs of all plans go side by side on the one GPU: the model is small.
#
#   PLANS="--fc svd-llm --remove 0.2|--fc svd-llm --remove 0.3 --alloc uniform" \
#   HEALS="--rank 4|--rank 16" STEPS=600 benchmarks/run_gpu_heal.sh
#
# Results: RESULTS/heal-results.tar.gz (per run: heal.json and the adapter), compress.log and one
# log per heal run. DEADLINE (epoch seconds) makes every heal run stop training in time (--time-limit).
# On this host the same steps run with DEVICE=cpu (slowly), MODEL defaulting to smollm2-135m.
set -euo pipefail
DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-600} WORK=${WORK:-/tmp/tensoredge-heal}
RESULTS=${OUT:-benchmarks/results/heal}
PLANS=${PLANS:?give the compression plans, separated by |}
HEALS=${HEALS:-}  # extra `tensoredge heal` options per run, separated by |
HEAL_ARGS=${HEAL_ARGS:-}  # options for every heal run, e.g. --batch 8 --seq-len 512
DEADLINE=${DEADLINE:-0}  # epoch seconds by which every heal run should be done (0: none)
PY=${PY:-python3}
if [ "$DEVICE" = cuda ]; then
    source benchmarks/gpu_setup.sh
    MODEL=${GGUF:?the GGUF parts are not all here yet: carry .gguf-parts/ part by part, in calls made back to back}
    nvidia-smi --query-gpu=name,driver_version --format=csv
else
    MODEL=${MODEL:-smollm2-135m}
fi
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" "$WORK"
IFS='|' read -ra plans <<< "$PLANS"
IFS='|' read -ra heals <<< "${HEALS:- }"
for i in "${!plans[@]}"; do  # one at a time: CPU threads are shared; the calibration pass runs on DEVICE
    # shellcheck disable=SC2086 # a plan is several arguments
    $PY -m toolkit.cli compress --model "$MODEL" ${plans[$i]} --device "$DEVICE" --out "$WORK/plan$i/compressed" \
        >> "$RESULTS/compress.log" 2>&1
done
limit=()
if [ "$DEADLINE" != 0 ]; then  # training stops in time to leave 60 s for evaluation and saving
    limit=(--time-limit $(( DEADLINE - $(date +%s) - 60 )))
fi
pids=()
for i in "${!plans[@]}"; do
    for j in "${!heals[@]}"; do
        run="$WORK/plan$i-heal$j"
        # shellcheck disable=SC2086 # options are several arguments
        OMP_NUM_THREADS=2 $PY -m toolkit.cli heal --model "$WORK/plan$i/compressed" --targets mlp,attention \
            --steps "$STEPS" --device "$DEVICE" --max-tokens 8192 "${limit[@]}" $HEAL_ARGS ${heals[$j]} \
            --out "$run" > "$RESULTS/heal-plan$i-heal$j.log" 2>&1 &
        pids+=($!)
    done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
# heal.json and adapter.json of every run, and the adapter weights of runs under 4 MiB (what comes back
# from the lent machine is limited to 16 MiB a file; rank 16 on every linear is 21 MB)
(cd "$WORK" && find . \( -name heal.json -o -name adapter.json -o -name adapter.safetensors -size -4M \) \
    | tar czf - -T -) > "$RESULTS/heal-results.tar.gz"
exit $status
