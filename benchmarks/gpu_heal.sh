#!/usr/bin/env bash
# Healing the default model on the lent GPU (issue 14). Each stage skips what an earlier call on the
# same (warm) machine already did, so the work can span several calls of at most 10 minutes:
#
#   gen      the teacher's samples, once per setting in GENS (`tensoredge heal-data generate`), side by side
#   compress each plan of PLANS, once (`tensoredge compress`), side by side with gen
#   heal     every plan x every HEALS entry, side by side on the one GPU, until DEADLINE; a run that
#            stops at the deadline is checkpointed and the next call resumes it exactly. With
#            TRAIN_SECONDS, a first 45-second probe of all runs side by side measures each one's
#            speed, and its --steps is set so that its learning-rate schedule ends after that much
#            training (kept in $WORK/plan<i>-heal<j>.steps for the calls that resume it)
#   eval     every healed model (and each plan unhealed, and the dense model) on the full WikiText-2
#            test set and the full second held-out text (benchmarks/heal_eval.py: the `tensoredge eval`
#            figures, all in one process), with float weights and with the weights fake-quantized to
#            QUANT_EVAL (default int4, MatMulNBits blocks of 32: post-training quantization, or what
#            `heal --quant` trained for)
#   export   each run named in EXPORTS written by `tensoredge export onnx $EXPORT_ARGS` (default
#            --precision int4; EXPORT_ARGS_plan0_heal2=... for run plan0-heal2 alone) to $WORK/onnx-<run>;
#            benchmarks/gpu_ship.sh returns it in parts
#
# Results: $OUT/heal-results.tar.gz (logs, heal.json, eval JSON, samples.json, manifests; no weights)
# and $OUT/summary.txt. The healed models stay in $WORK/plan<i>-heal<j>/model for later steps
# (e.g. `tensoredge export onnx --model $WORK/plan0-heal1/model --precision int4`).
#
#   GENS="1.0:1.0|0.8:0.95" GEN_TOKENS=8000000 \
#   PLANS="--fc svd-llm --remove 0.2|--fc svd-llm --remove 0.3 --alloc uniform" \
#   HEALS="--data valid|--data valid:0.5,generated=@gen0:0.5|--data valid:0.5,generated=@gen1:0.5,books:0.2|--data valid:0.5,generated=@gen1:0.5 --quant int4" \
#   HEAL_ARGS="--batch 16 --seq-len 512 --steps 4000 --eval-every 250" \
#   DEADLINE=$(( $(date +%s) + 540 )) benchmarks/gpu_heal.sh
#
# A plan that is the word `dense` is the uncompressed model itself (e.g. healed for int4: quantization-aware
# training of the dense model, the reference a compressed file must beat).
# RUNS="0:0 0:1 1:0" heals only those plan:heal pairs (default: every plan with every HEALS entry).
# SHARE_PROFILE=1: plans with --alloc sensitivity share one measured profile per calibration text
# (`compress --sensitivity-profile`): the first measures it alone, the others read it.
# In HEALS, @gen<k> stands for the samples folder of the k-th entry of GENS (temperature:top-p).
# STAGES (default "gen compress heal eval export") picks stages. DEADLINE (epoch seconds) is when every heal
# run must have stopped training; EVAL_RESERVE seconds (default 90) are left for its own evaluation
# and saving. On a host without a GPU the same steps run with DEVICE=cpu and MODEL=tiny-gpt2 (a dry
# run of the script; EVAL_ARGS="--max-tokens 2048" keeps its evaluations short). The dense model is
# saved once as a folder ($WORK/dense), the teacher of every step: it loads in seconds.
set -euo pipefail
DEVICE=${DEVICE:-cuda} WORK=${WORK:-/tmp/tensoredge-heal} RESULTS=${OUT:-benchmarks/results/heal}
PLANS=${PLANS:?give the compression plans, separated by |}
HEALS=${HEALS:-}            # `tensoredge heal` options per run, separated by |
HEAL_ARGS=${HEAL_ARGS:-}    # options for every heal run
GENS=${GENS:-}              # temperature:top-p per teacher-sample setting, separated by |
GEN_TOKENS=${GEN_TOKENS:-8000000} GEN_LENGTH=${GEN_LENGTH:-480} GEN_PROMPT=${GEN_PROMPT:-32}
GEN_BATCH=${GEN_BATCH:-1024} GEN_PROMPTS=${GEN_PROMPTS:-valid}  # texts the prompts come from (valid, books)
RUNS=${RUNS:-}              # plan:heal pairs to run, e.g. "0:0 1:1" (default: all)
STAGES=${STAGES:-gen compress heal eval export}
DEADLINE=${DEADLINE:-0} EVAL_RESERVE=${EVAL_RESERVE:-90}
TRAIN_SECONDS=${TRAIN_SECONDS:-} PROBE_SECONDS=${PROBE_SECONDS:-45}  # set: each run's --steps is measured to last this long (stage heal)
EXPORTS=${EXPORTS:-}        # stage export: healed runs (plan<i>-heal<j>) to write as ONNX (EXPORT_ARGS)
EXPORT_ARGS=${EXPORT_ARGS:---precision int4}
EVAL_ARGS=${EVAL_ARGS:-}    # extra benchmarks/heal_eval.py options, e.g. --max-tokens N (default: the full texts)
QUANT_EVAL=${QUANT_EVAL-int4}  # also evaluate every model with its weights fake-quantized so: int4, int8,
                               # int4-zp (zero points), comma-separated ("": no)
EVAL_UNHEALED=${EVAL_UNHEALED:-1}  # 0: stage eval scores the dense model and the healed ones only
PY=${PY:-python3}
THREADS=${THREADS:-2}       # OMP threads of each compress and generate process (16 cores, many processes:
                            # unlimited, nine at once ran 4-5x slower, benchmarks/results/goal-2026-12-02-h200)
if [ "$DEVICE" = cuda ]; then
    source benchmarks/gpu_setup.sh
    MODEL=${MODEL:-${GGUF:?the GGUF parts are not all here yet: carry .gguf-parts/ part by part, in calls made back to back}}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
else
    MODEL=${MODEL:-smollm2-135m}
fi
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" "$WORK/logs"
LOGS=$WORK/logs
has() { [[ " $STAGES " == *" $1 "* ]]; }
wanted() { [ -z "$RUNS" ] || [[ " $RUNS " == *" $1:$2 "* ]]; }  # wanted I J: is plan I healed with HEALS entry J
IFS='|' read -ra plans <<< "$PLANS"
IFS='|' read -ra heals <<< "${HEALS:- }"
IFS='|' read -ra gens <<< "$GENS"

pids=()
if [ ! -f "$WORK/dense/manifest.json" ]; then  # the teacher as a folder: seconds to load, where the GGUF takes ~45 s
    $PY -c "import sys; from toolkit.checkpoint import open_model, save_compressed; \
save_compressed(open_model(sys.argv[1]), {}, sys.argv[2])" "$MODEL" "$WORK/dense" > "$LOGS/dense.log" 2>&1 &
    dense_pid=$!
fi

compress_plan() {  # compress_plan I: plan I compressed, in the background
    local profile=()
    # plans measuring sensitivity share one profile per calibration (SHARE_PROFILE=1): measured by the first
    if [ -n "${SHARE_PROFILE:-}" ] && [[ "${plans[$1]}" == *"--alloc sensitivity"* ]]; then
        local calibration=valid
        [[ "${plans[$1]}" =~ --calibration\ ([^ ]+) ]] && calibration=${BASH_REMATCH[1]}
        profile=(--sensitivity-profile "$WORK/profile-${calibration//,/+}.json")
    fi
    # shellcheck disable=SC2086 # a plan is several arguments
    OMP_NUM_THREADS=$THREADS $PY -m toolkit.cli compress --model "$MODEL" ${plans[$1]} "${profile[@]}" --device "$DEVICE" \
        --out "$WORK/plan$1/compressed" --json "$LOGS/compress-plan$1.json" > "$LOGS/compress-plan$1.log" 2>&1 &
    pids+=($!)
}
first=()
if has compress; then  # with SHARE_PROFILE, the first sensitivity plan measures the profile, meanwhile
    for i in "${!plans[@]}"; do  # the dense folder is saved and the teacher's samples generated
        [ -f "$WORK/plan$i/compressed/manifest.json" ] && continue
        if [ -n "${SHARE_PROFILE:-}" ] && [ ${#first[@]} = 0 ] && [[ "${plans[$i]}" == *"--alloc sensitivity"* ]]; then
            compress_plan "$i"; first=("$i" "${pids[-1]}"); pids=()
        fi
    done
fi
[ -n "${dense_pid:-}" ] && wait "$dense_pid"
for i in "${!plans[@]}"; do  # `dense` plans: the saved dense folder
    [ "${plans[$i]}" = dense ] && [ ! -e "$WORK/plan$i/compressed" ] && mkdir -p "$WORK/plan$i" \
        && ln -s "$WORK/dense" "$WORK/plan$i/compressed"
done

if has gen; then
    for k in "${!gens[@]}"; do
        temperature=${gens[$k]%%:*} top_p=${gens[$k]##*:}
        [ -f "$WORK/gen$k/samples.json" ] && continue
        OMP_NUM_THREADS=$THREADS $PY -m toolkit.cli heal-data generate --teacher "$WORK/dense" --tokens "$GEN_TOKENS" --length "$GEN_LENGTH" \
            --prompt-length "$GEN_PROMPT" --prompts "$GEN_PROMPTS" --temperature "$temperature" --top-p "$top_p" --batch "$GEN_BATCH" \
            --seed "$k" --device "$DEVICE" --out "$WORK/gen$k" --json "$LOGS/gen$k.json" > "$LOGS/gen$k.log" 2>&1 &
        pids+=($!)
    done
fi
if has compress; then  # the other plans once the profile is measured, each in its own process
    [ ${#first[@]} = 2 ] && { wait "${first[1]}" || true; }
    for i in "${!plans[@]}"; do
        [ -f "$WORK/plan$i/compressed/manifest.json" ] || [ "${plans[$i]}" = dense ] || [ "$i" = "${first[0]:-}" ] \
            && continue
        compress_plan "$i"
    done
fi
for pid in "${pids[@]}"; do wait "$pid"; done

heal_run() {  # heal_run I J LOG ARGS...: plan I healed with HEALS entry J, in the background
    local i=$1 j=$2 log=$3 options=${heals[$2]}
    shift 3
    for k in "${!gens[@]}"; do options=${options//@gen$k/$WORK/gen$k}; done
    # shellcheck disable=SC2086 # options are several arguments
    OMP_NUM_THREADS=2 $PY -m toolkit.cli heal --model "$WORK/plan$i/compressed" --teacher "$WORK/dense" \
        --device "$DEVICE" $HEAL_ARGS $options "$@" >> "$log" 2>&1 &
    pids+=($!)
}

if has heal && [ -n "$TRAIN_SECONDS" ]; then
    # --steps from the speed each run has beside all the others (a 45-second probe), so that the
    # learning-rate schedule ends when TRAIN_SECONDS of training (over one or more calls) have passed
    # (PROBE_SECONDS, default 45, of training beside each other; the probes' folders are thrown away)
    pids=() probes=()
    for i in "${!plans[@]}"; do
        for j in "${!heals[@]}"; do
            wanted "$i" "$j" || continue
            [ -f "$WORK/plan$i-heal$j.steps" ] && continue
            heal_run "$i" "$j" "$LOGS/probe-plan$i-heal$j.log" --steps 100000 --time-limit "$PROBE_SECONDS" --eval-every 0 \
                --max-tokens 2048 --checkpoint-every 100000 --out "$WORK/probe/plan$i-heal$j"
            probes+=("$i-$j")
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for run in "${probes[@]}"; do
        i=${run%-*} j=${run#*-}
        $PY -c "import json, sys; t = json.load(open(sys.argv[1]))['training']; \
print(max(50, int(t['steps_done'] / t['train_seconds'] * float(sys.argv[2]))))" \
            "$WORK/probe/plan$i-heal$j/heal.json" "$TRAIN_SECONDS" > "$WORK/plan$i-heal$j.steps" \
            || echo "${FALLBACK_STEPS:-1000}" > "$WORK/plan$i-heal$j.steps"
        echo "plan$i-heal$j: $(cat "$WORK/plan$i-heal$j.steps") steps for $TRAIN_SECONDS s of training"
    done
fi

status=0
if has heal; then
    limit=()
    if [ "$DEADLINE" != 0 ]; then
        limit=(--time-limit $(( DEADLINE - $(date +%s) - EVAL_RESERVE )))
    fi
    pids=()
    for i in "${!plans[@]}"; do
        for j in "${!heals[@]}"; do
            wanted "$i" "$j" || continue
            printf 'plan: %s\ncommon: %s\nheal: %s\n' "${plans[$i]}" "$HEAL_ARGS" "${heals[$j]}" \
                > "$LOGS/heal-plan$i-heal$j.options"
            steps=()
            [ -f "$WORK/plan$i-heal$j.steps" ] && steps=(--steps "$(cat "$WORK/plan$i-heal$j.steps")")
            heal_run "$i" "$j" "$LOGS/heal-plan$i-heal$j.log" "${limit[@]}" "${steps[@]}" --out "$WORK/plan$i-heal$j"
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
fi

if has eval; then  # the headline figures: full WikiText-2 test and the full second text, one process, batched
    models=(--model "dense=$WORK/dense")
    for i in "${!plans[@]}"; do
        [ "${plans[$i]}" = dense ] || [ "$EVAL_UNHEALED" = 0 ] || models+=(--model "plan$i=$WORK/plan$i/compressed")
        for j in "${!heals[@]}"; do
            [ -f "$WORK/plan$i-heal$j/model/manifest.json" ] && models+=(--model "plan$i-heal$j=$WORK/plan$i-heal$j/model")
        done
    done
    # shellcheck disable=SC2086 # options are several arguments
    $PY benchmarks/heal_eval.py --reference "$WORK/dense" "${models[@]}" --device "$DEVICE" --quant "$QUANT_EVAL" \
        --out "$LOGS" $EVAL_ARGS > "$LOGS/eval.log" 2>&1 || status=1
fi

if has export; then  # the healed file as it ships; benchmarks/gpu_ship.sh brings it back in parts
    for name in $EXPORTS; do
        [ -f "$WORK/onnx-$name/export.json" ] && continue
        own="EXPORT_ARGS_${name//-/_}"
        # shellcheck disable=SC2086 # options are several arguments
        $PY -m toolkit.cli export onnx --model "$WORK/$name/model" ${!own:-$EXPORT_ARGS} --out "$WORK/onnx-$name" \
            --json "$LOGS/export-$name.json" > "$LOGS/export-$name.log" 2>&1 || status=1
    done
fi

# Everything small goes back in one tarball: logs, options, heal.json, eval JSON, samples.json, manifests.
(cd "$WORK" && find . \( -path ./logs -o -name heal.json -o -name samples.json -o -name manifest.json \) -print \
    | tar czf - -T -) > "$RESULTS/heal-results.tar.gz"
{
    date -u
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
    for steps in "$WORK"/*.steps; do [ -f "$steps" ] && echo "$(basename "$steps"): $(cat "$steps")"; done
    for log in "$LOGS"/heal-*.log "$LOGS"/export-*.log; do [ -f "$log" ] && { echo "== $log"; tail -n 4 "$log"; }; done
    for json in "$LOGS"/eval-*.json; do
        [ -f "$json" ] && $PY -c "import json,sys; r=json.load(open(sys.argv[1])); s=r['scores']['model']; \
print(sys.argv[1].split('/')[-1], r['tokens'], round(s['perplexity'], 3), s.get('kl'))" "$json"
    done
} > "$RESULTS/summary.txt" 2>&1
exit $status
