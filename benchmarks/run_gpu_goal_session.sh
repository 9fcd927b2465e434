#!/usr/bin/env bash
# Issue 14's goals measured on the lent H200, beside the grid points the last session lost, in calls
# made back to back (the machine is given back 30 s after a call; a call carries 64 MiB with the repo,
# about 11 MiB now, and runs at most 10 minutes). Ray is not carried this time (its wheel is two
# calls): the grids run in-process, one process per part, side by side on the one GPU. The GGUF travels
# xz-compressed in two parts, so the work starts in the second call:
#
#   CALL=1  carry .whl .gguf-xz-1      transformers & co. + GGUF part 1 (seconds)
#   CALL=2  carry .gguf-xz-2           GGUF complete: every job below starts, side by side
#   CALL=3  carry .whl-tensorly        the jobs resume; trawl (Tucker) starts; at the deadline the goal
#                                      runs stop, SHIP is exported as int4 ONNX and its first pieces return
#   CALL=4                             full-text evaluation of every model (benchmarks/heal_eval.py); the
#                                      last pieces of SHIP
#
# Give the call's timeout_s at least WORK_SECONDS + 60: results are copied to $OUT every 20 s.
#
# The jobs:
# - goal: benchmarks/gpu_heal.sh with the plans of issue 14's goals, each healed on WikiText-2 valid,
#   the public-domain books and the teacher's own samples (0.3/0.3/0.4), every parameter trained,
#   TRAIN_SECONDS of training over calls 2 and 3 (its learning-rate schedule measured to end then):
#     plan0  20% of all parameters, sensitivity split (--scope all)   healed in float; and for int4
#     plan1  30% of all parameters, sensitivity split                 healed in float
#     plan2  10% of FC, svd-llm sensitivity ranks                     healed for int4 (the file to ship)
#     plan3  the tied table and head as a rank-halved SVD (head reads half the bytes)  healed in float
# - heal02, heal03: the heal grid's 20% and 30% points (svd-llm x uniform/surgical/sensitivity, 500
#   steps x 8 x 512 tokens, 16,384 test tokens), resumed from the last session's JSON, one removal each
# - tt: the FC grid's tt-linear points (8,193 test tokens), resumed from docs/fc-grid
# - tucker (call 3, once tensorly is here): the FC grid's trawl (Tucker) points
# - profile: the default model's svd-llm sensitivity profile with the pipeline's defaults (valid
#   calibration, 16,384 + 4,096 tokens), written by `compress --sensitivity-profile` and shipped in
#   models/assets/ so that `make demo` on two cores need not measure it (hours there)
#
# Results come back as $OUT/results.tar.gz (and SHIP as tar pieces); committed under benchmarks/results/goal-2026-12-02-h200/.
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
begin=$(date +%s)
DEADLINE=$((begin + ${WORK_SECONDS:-540}))
source benchmarks/gpu_setup.sh
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
python3 -c "import scipy, tensorly; print('scipy', scipy.__version__, 'tensorly', tensorly.__version__)" 2>&1 | tail -1  || true
case "${CALL:?set CALL to 1, 2, 3 or 4}" in
1) exit 0 ;;
esac
: "${GGUF:?the GGUF parts are not all here yet}"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
W=/tmp/tensoredge-goal
mkdir -p "$W/heal02" "$W/heal03" "$W/tt" "$W/tucker" "$W/profile" "$W/logs"
for part in heal02 heal03; do
    [ -f "$W/$part/fc-sweep.json" ] || cp benchmarks/results/grid-2026-12-02-h200/heal-grid/fc-sweep.json "$W/$part/"
done
for part in tt tucker; do [ -f "$W/$part/fc-sweep.json" ] || cp docs/fc-grid/fc-sweep.json "$W/$part/"; done
left() { echo $((DEADLINE - $(date +%s))); }

export WORK=$W/heal
export PLANS="--fc svd-llm --scope all --remove 0.2 --alloc sensitivity --calibration valid,books|\
--fc svd-llm --scope all --remove 0.3 --alloc sensitivity --calibration valid,books|\
--fc svd-llm --remove 0.1 --alloc sensitivity --calibration valid,books|\
--embedding svd-table:ratio=2,head=shared"
export HEALS="--data valid:0.3,books:0.3,generated=@gen0:0.4|--data valid:0.3,books:0.3,generated=@gen0:0.4 --quant int4"
export RUNS="0:0 0:1 1:0 2:1 3:0" SHARE_PROFILE=1  # SHARE_PROFILE and gpu_heal.sh's THREADS came after this
# session's run: without them, nine processes at once with unlimited threads took 8 minutes to compress
export GENS="1.0:1.0" GEN_TOKENS=3000000 GEN_PROMPTS=valid,books
export HEAL_ARGS="--batch 12 --seq-len 512 --eval-every 0" TRAIN_SECONDS=${TRAIN_SECONDS:-600} PROBE_SECONDS=40
SHIP=${SHIP:-plan2-heal1}

goal() {
    case "$CALL" in
    2) STAGES="gen compress heal" DEADLINE=$((DEADLINE - 15)) EVAL_RESERVE=30 OUT=$W/goal benchmarks/gpu_heal.sh \
           >> "$W/goal.log" 2>&1 || true ;;
    3) STAGES="heal" DEADLINE=$((DEADLINE - 150)) EVAL_RESERVE=30 OUT=$W/goal benchmarks/gpu_heal.sh \
           >> "$W/goal.log" 2>&1 || true
       STAGES=export EXPORTS=$SHIP OUT=$W/goal benchmarks/gpu_heal.sh >> "$W/goal.log" 2>&1 || true ;;
    4) STAGES=eval OUT=$W/goal timeout "$(left)" benchmarks/gpu_heal.sh >> "$W/goal.log" 2>&1 || true ;;
    esac
}
heal_grid() {  # heal_grid REMOVAL FOLDER
    [ "$CALL" = 4 ] && return 0
    timeout -s TERM "$(left)" python3 -m toolkit.cli sweep fc --model smollm2-135m --out "$W/$2" \
        --max-tokens 16385 --methods svd-llm --allocs uniform,surgical,sensitivity --removals "$1" \
        --heal 500 --heal-batch 8 --heal-seq-len 512 --heal-lr 3e-4 --heal-tokens 1000000 --hopeless inf \
        --device cuda >> "$W/$2.log" 2>&1 || true
}
heal02() { heal_grid 0.2 heal02; }
heal03() { heal_grid 0.3 heal03; }
tt() {
    [ "$CALL" = 4 ] && return 0
    OMP_NUM_THREADS=3 timeout -s TERM "$(left)" python3 -m toolkit.cli sweep fc --model smollm2-135m --out "$W/tt" \
        --max-tokens 8193 --methods tt-linear --allocs uniform,surgical --device cuda >> "$W/tt.log" 2>&1 || true
}
tucker() {
    [ "$CALL" = 3 ] || return 0
    python3 -c "import tensorly" 2>/dev/null || { echo "no tensorly: trawl not run" >> "$W/tucker.log"; return 0; }
    OMP_NUM_THREADS=4 timeout -s TERM "$(left)" python3 -m toolkit.cli sweep fc --model smollm2-135m --out "$W/tucker" \
        --max-tokens 8193 --methods trawl --allocs uniform --device cuda --retry-failed >> "$W/tucker.log" 2>&1 || true
}

profile() {
    [ "$CALL" = 2 ] || return 0
    python3 -m toolkit.cli compress --model smollm2-135m --fc svd-llm --remove 0.1 --alloc sensitivity \
        --sensitivity-profile "$W/profile/smollm2-135m.svd-llm.sensitivity.json" --device cuda --out "$W/profile/c" \
        --json "$W/profile/compress.json" >> "$W/profile.log" 2>&1 || true
}

collect() {  # $OUT/results.tar.gz now (a call returns at most 8 files): a call cut short still brings back what was done
    local c=$W/collect
    rm -rf "$c"; mkdir -p "$c/goal"
    for name in heal02 heal03 tt tucker profile; do
        mkdir -p "$c/$name"; cp "$W/$name"/*.{json,md,png} "$c/$name/" 2>/dev/null || true
        tail -n 100 "$W/$name.log" 2>/dev/null | grep -v "logging.cc" > "$c/$name/$name.log" || true
    done
    cp "$W/goal"/* "$c/goal/" 2>/dev/null || true
    tail -n 150 "$W/goal.log" 2>/dev/null > "$c/goal/goal.log" || true
    for log in "$WORK"/logs/*.log; do [ -f "$log" ] && tail -n 25 "$log" > "$c/goal/$(basename "$log")"; done
    cp "$WORK"/logs/*.{json,options} "$c/goal/" 2>/dev/null || true
    for heal in "$WORK"/plan*-heal*/heal.json; do [ -f "$heal" ] && cp "$heal" "$c/goal/$(basename "$(dirname "$heal")").heal.json"; done
    tar czf "$OUT/results.tar.gz.tmp" -C "$c" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

for job in goal heal02 heal03 tt tucker profile; do $job & sleep 2; done
while [ -n "$(jobs -rp)" ]; do  # a heartbeat for the call's log, and the results so far
    sleep 20; collect
    echo "[$(( $(date +%s) - begin )) s] $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
done
wait || true
collect
case "$CALL" in
3) [ -d "$WORK/onnx-$SHIP" ] && OUT=$OUT benchmarks/gpu_ship.sh "$WORK/onnx-$SHIP" 1 3 || true ;;
4) [ -d "$WORK/onnx-$SHIP" ] && OUT=$OUT benchmarks/gpu_ship.sh "$WORK/onnx-$SHIP" 4 3 || true ;;
esac
for name in heal02 heal03 tt tucker profile goal; do echo "== $name"; tail -n 5 "$W/collect/$name/$name.log" | cut -c1-300 || true; done
cat "$W/goal/summary.txt" 2>/dev/null || true
