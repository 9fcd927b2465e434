#!/usr/bin/env bash
# Healing the default model on the lent GPU (issue 14). Each stage skips what an earlier call on the
# same (warm) machine already did, so the work can span several calls of at most 10 minutes:
#
#   gen      the teacher's samples, once per setting in GENS (`tensoredge heal-data generate`)
#   compress each plan of PLANS, once (`tensoredge compress`)
#   heal     every plan x every HEALS entry, side by side on the one GPU, until DEADLINE; a run that
#            stops at the deadline is checkpointed and the next call resumes it exactly
#   eval     every healed model (and each plan unhealed, and the dense model) on the full WikiText-2
#            test set and the full second held-out text (benchmarks/heal_eval.py: the `tensoredge eval`
#            figures, all in one process), with float weights and with the weights fake-quantized to
#            QUANT_EVAL (default int4, MatMulNBits blocks of 32: post-training quantization, or what
#            `heal --quant` trained for)
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
# In HEALS, @gen<k> stands for the samples folder of the k-th entry of GENS (temperature:top-p).
# STAGES (default "gen compress heal eval") picks stages. DEADLINE (epoch seconds) is when every heal
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
GEN_BATCH=${GEN_BATCH:-1024}
STAGES=${STAGES:-gen compress heal eval}
DEADLINE=${DEADLINE:-0} EVAL_RESERVE=${EVAL_RESERVE:-90}
EVAL_ARGS=${EVAL_ARGS:-}    # extra benchmarks/heal_eval.py options, e.g. --max-tokens N (default: the full texts)
QUANT_EVAL=${QUANT_EVAL-int4}  # also evaluate every model with its weights fake-quantized so ("": no)
PY=${PY:-python3}
if [ "$DEVICE" = cuda ]; then
    source benchmarks/gpu_setup.sh
    MODEL=${GGUF:?the GGUF parts are not all here yet: carry .gguf-parts/ part by part, in calls made back to back}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
else
    MODEL=${MODEL:-smollm2-135m}
fi
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" "$WORK/logs"
LOGS=$WORK/logs
has() { [[ " $STAGES " == *" $1 "* ]]; }
IFS='|' read -ra plans <<< "$PLANS"
IFS='|' read -ra heals <<< "${HEALS:- }"
IFS='|' read -ra gens <<< "$GENS"

if [ ! -f "$WORK/dense/manifest.json" ]; then  # the teacher as a folder: seconds to load, where the GGUF takes ~45 s
    $PY -c "import sys; from toolkit.checkpoint import open_model, save_compressed; \
save_compressed(open_model(sys.argv[1]), {}, sys.argv[2])" "$MODEL" "$WORK/dense" > "$LOGS/dense.log" 2>&1
fi

if has gen; then
    for k in "${!gens[@]}"; do
        temperature=${gens[$k]%%:*} top_p=${gens[$k]##*:}
        [ -f "$WORK/gen$k/samples.json" ] && continue
        $PY -m toolkit.cli heal-data generate --teacher "$WORK/dense" --tokens "$GEN_TOKENS" --length "$GEN_LENGTH" \
            --prompt-length "$GEN_PROMPT" --temperature "$temperature" --top-p "$top_p" --batch "$GEN_BATCH" \
            --seed "$k" --device "$DEVICE" --out "$WORK/gen$k" --json "$LOGS/gen$k.json" > "$LOGS/gen$k.log" 2>&1
    done
fi

if has compress; then  # one at a time: the calibration pass runs on DEVICE
    for i in "${!plans[@]}"; do
        [ -f "$WORK/plan$i/compressed/manifest.json" ] && continue
        # shellcheck disable=SC2086 # a plan is several arguments
        $PY -m toolkit.cli compress --model "$MODEL" ${plans[$i]} --device "$DEVICE" --out "$WORK/plan$i/compressed" \
            --json "$LOGS/compress-plan$i.json" > "$LOGS/compress-plan$i.log" 2>&1
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
            options=${heals[$j]}
            for k in "${!gens[@]}"; do options=${options//@gen$k/$WORK/gen$k}; done
            printf 'plan: %s\ncommon: %s\nheal: %s\n' "${plans[$i]}" "$HEAL_ARGS" "${heals[$j]}" \
                > "$LOGS/heal-plan$i-heal$j.options"
            # shellcheck disable=SC2086 # options are several arguments
            OMP_NUM_THREADS=2 $PY -m toolkit.cli heal --model "$WORK/plan$i/compressed" --teacher "$WORK/dense" \
                --device "$DEVICE" \
                "${limit[@]}" $HEAL_ARGS $options --out "$WORK/plan$i-heal$j" \
                >> "$LOGS/heal-plan$i-heal$j.log" 2>&1 &
            pids+=($!)
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
fi

if has eval; then  # the headline figures: full WikiText-2 test and the full second text, one process, batched
    models=(--model "dense=$WORK/dense")
    for i in "${!plans[@]}"; do
        models+=(--model "plan$i=$WORK/plan$i/compressed")
        for j in "${!heals[@]}"; do
            [ -f "$WORK/plan$i-heal$j/model/manifest.json" ] && models+=(--model "plan$i-heal$j=$WORK/plan$i-heal$j/model")
        done
    done
    # shellcheck disable=SC2086 # options are several arguments
    $PY benchmarks/heal_eval.py --reference "$WORK/dense" "${models[@]}" --device "$DEVICE" --quant "$QUANT_EVAL" \
        --out "$LOGS" $EVAL_ARGS > "$LOGS/eval.log" 2>&1 || status=1
fi

# Everything small goes back in one tarball: logs, options, heal.json, eval JSON, samples.json, manifests.
(cd "$WORK" && find . \( -path ./logs -o -name heal.json -o -name samples.json -o -name manifest.json \) -print \
    | tar czf - -T -) > "$RESULTS/heal-results.tar.gz"
{
    date -u
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
    for log in "$LOGS"/heal-*.log; do [ -f "$log" ] && { echo "== $log"; tail -n 4 "$log"; }; done
    for json in "$LOGS"/eval-*.json; do
        [ -f "$json" ] && $PY -c "import json,sys; r=json.load(open(sys.argv[1])); s=r['scores']['model']; \
print(sys.argv[1].split('/')[-1], r['tokens'], round(s['perplexity'], 3), s.get('kl'))" "$json"
    done
} > "$RESULTS/summary.txt" 2>&1
exit $status
