#!/usr/bin/env bash
# The healing session of issues 14, 17 and 20 on the lent H200, in four calls made back to back (the
# machine stays warm 30 s between calls; a call carries 64 MiB and runs at most 10 minutes):
#
#   CALL=1  carry .whl .gguf-parts-1   wheels + first GGUF part; benchmarks/gpu_smoke.sh rehearses
#   CALL=2  carry .gguf-parts-2        GGUF complete; teacher samples + compression side by side,
#                                      speed probe, then every heal run until the deadline
#   CALL=3                             heal runs resumed to the end of their schedule; full-text
#                                      evaluation; the best int4 candidate exported and its first pieces
#   CALL=4                             the GPU reference (issue 20) on the idle GPU, dense and that
#                                      healed model; the last pieces of the exported file
#
# Results land in $OUT and are committed under benchmarks/results/heal-<date>/ and gpu-<date>/.
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
export WORK=/tmp/tensoredge-heal
export PLANS="--fc svd-llm --remove 0.2|--fc svd-llm --remove 0.3 --alloc uniform"
export GENS="1.0:1.0|0.8:0.95" GEN_TOKENS=3000000
export HEALS="--data valid:0.5,generated=@gen0:0.5 --quant int4|--data valid:0.5,generated=@gen0:0.5|\
--data valid:0.5,generated=@gen1:0.5 --quant int4"
export HEAL_ARGS="--batch 16 --seq-len 512" TRAIN_SECONDS=${TRAIN_SECONDS:-400}
CANDIDATES="plan1-heal0 plan1-heal2 plan0-heal0 plan0-heal2"  # int4-trained runs, smallest plan first
begin=$(date +%s)
case "${CALL:?set CALL to 1, 2, 3 or 4}" in
1) benchmarks/gpu_smoke.sh ;;
2) STAGES="gen compress heal" DEADLINE=$((begin + 575)) OUT=$OUT/heal benchmarks/gpu_heal.sh ;;
3) STAGES="heal eval" DEADLINE=$((begin + 330)) OUT=$OUT/heal benchmarks/gpu_heal.sh || true
   pick=$(python3 benchmarks/heal_pick.py "$WORK/logs" $CANDIDATES)
   echo "$pick" > "$WORK/picked"
   STAGES=export EXPORTS=$pick OUT=$OUT/heal benchmarks/gpu_heal.sh
   cat "$OUT/heal/summary.txt"
   OUT=$OUT/heal benchmarks/gpu_ship.sh "$WORK/onnx-$pick" 1 3 ;;
4) source benchmarks/gpu_setup.sh
   pick=$(cat "$WORK/picked")
   mkdir -p "$OUT/gpu" "$OUT/ship"
   nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,pstate,temperature.gpu,memory.used \
       --format=csv > "$OUT/gpu/nvidia-smi.txt"
   python3 benchmarks/gpu_reference.py --dense "$WORK/dense" --compressed "$WORK/$pick/model" --out "$OUT/gpu" \
       --budget-s "${REF_BUDGET:-170}" 2>&1 | tee "$OUT/gpu/gpu-reference.log" | tail -n 40
   OUT=$OUT/ship benchmarks/gpu_ship.sh "$WORK/onnx-$pick" 4 4 ;;
esac
