#!/usr/bin/env bash
# Issue 19's grids on the lent H200 through Ray, with issue 14's allocations compared after healing, in
# calls made back to back (the machine is given back 30 s after a call; a call carries 64 MiB with the
# repo, about 11 MiB now, and runs at most 10 minutes). The machine has 16 cores, one GPU and Python
# 3.12, no Ray and no network: Ray's wheel (76 MiB) and the GGUF (94 MiB) travel in parts.
#
#   CALL=1  carry .whl .gguf-parts-1           transformers & co. + GGUF part 1
#   CALL=2  carry .gguf-parts-2                GGUF part 2
#   CALL=3  carry .gguf-parts-3 .ray-parts-1   GGUF complete; Ray part 1
#   CALL=4  carry .ray-parts-2                 Ray installed; the three jobs below start, side by side
#   CALL=5, 6 ...                              the jobs resume (finished points are skipped) until done;
#                                              JOBS="heal_grid" runs only the jobs named
# Give the call's timeout_s at least WORK_SECONDS + 60 (set-up, the last heartbeat): results are
# copied to $OUT every 20 s, so a call cut short still returns what it finished.
#
# The jobs, each stopped (SIGTERM) at the call's deadline; the next call goes on where it stopped:
# - fc-grid: the FC grid of docs/fc-grid (issue 19, item 6), resumed from the 9 points measured on the
#   2-core host, through `--ray local` with points on the GPU (--task-gpus 0.2: five at a time). Not
#   trawl-cp: at 10-30% removed its CP ranks (8.7k-11k) need a 61-79 GB ALS workspace each, which the
#   host refuses in one line (toolkit.compress.trawl.check_cp_fits), recorded there.
# - heal-grid: svd-llm at 10/20/30% of FC with uniform, surgical and sensitivity ranks, each healed
#   800 steps x 8 x 512 tokens on all of WikiText-2 valid, then scored on 32,768 test tokens
#   (`sweep fc --heal` through `--ray local`, three points on the GPU at once): the allocations
#   compared after healing (issue 14, item 3).
# - alloc: benchmarks/gpu_alloc.py, the same allocations training-free on the full test set, then the
#   whole-model budgets (issue 14, items 3 and 7).
#
# Results land in $OUT after every call; committed under benchmarks/results/grid-2026-12-02-h200/.
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
begin=$(date +%s)
DEADLINE=$((begin + ${WORK_SECONDS:-545}))
source benchmarks/gpu_setup.sh
case "${CALL:?set CALL to 1, 2, 3, 4, ...}" in
1|2|3) python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
       exit 0 ;;
esac
: "${GGUF:?the GGUF parts are not all here yet}"
python3 -c "import ray; print('ray', ray.__version__)"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
W=/tmp/tensoredge-grid
mkdir -p "$W/fc-grid" "$W/heal-grid" "$W/alloc"
[ -f "$W/fc-grid/fc-sweep.json" ] || cp docs/fc-grid/fc-sweep.json "$W/fc-grid/"
left() { echo $((DEADLINE - $(date +%s))); }

fc_grid() {
    timeout -s TERM "$(left)" python3 -m toolkit.cli sweep fc --model smollm2-135m --out "$W/fc-grid" \
        --max-tokens 8193 --methods svd,asvd,svd-llm,feature,trawl --allocs uniform,surgical \
        --ray local --device cuda --task-gpus 0.2 --task-cpus 3 >> "$W/fc-grid.log" 2>&1
}
heal_grid() {
    timeout -s TERM "$(left)" python3 -m toolkit.cli sweep fc --model smollm2-135m --out "$W/heal-grid" \
        --max-tokens 16385 --methods svd-llm --allocs uniform,surgical,sensitivity --removals 0.1,0.2,0.3 \
        --heal 500 --heal-batch 8 --heal-seq-len 512 --heal-lr 3e-4 --heal-tokens 1000000 --hopeless inf \
        --ray local --device cuda --task-gpus 0.3 --task-cpus 1 >> "$W/heal-grid.log" 2>&1
}
alloc() {
    local stage=fc
    [ -f "$W/alloc/gpu_alloc-fc.json" ] && stage=whole
    [ -f "$W/alloc/gpu_alloc-whole.json" ] && return 0
    OMP_NUM_THREADS=2 timeout -s TERM "$(left)" python3 benchmarks/gpu_alloc.py --model "$GGUF" --out "$W/alloc" \
        --stage "$stage" >> "$W/alloc.log" 2>&1
}

collect() {  # into $OUT now: a call cut short by its own limit still brings back what was done
    for name in fc-grid heal-grid alloc; do
        mkdir -p "$OUT/$name"; cp "$W/$name"/*.{json,md,png} "$OUT/$name/" 2>/dev/null || true
        tail -n 200 "$W/$name.log" 2>/dev/null | grep -v "logging.cc" > "$OUT/$name/$name.log" || true
    done
}

for job in ${JOBS:-fc_grid heal_grid alloc}; do $job & sleep 20; done
while [ -n "$(jobs -rp)" ]; do  # a heartbeat for the call's log, and the results so far
    sleep 20; collect
    echo "[$(( $(date +%s) - begin )) s] $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
done
wait || true
ray stop --force > /dev/null 2>&1 || true
collect
for name in fc-grid heal-grid alloc; do echo "== $name"; tail -n 6 "$OUT/$name/$name.log" | cut -c1-300 || true; done
