#!/usr/bin/env bash
# The fifth H200 session (issues 14, 17, 19): files healed for the int4 they ship in, with full
# schedules, beside the dense model healed the same way (the reference they must beat); issue 14's goal
# plans with full schedules; the heal grid's 20%/30% points. In calls made back to back:
#
#   CALL=1  carry .whl .gguf-xz-1a    transformers & co., GGUF xz part 0; a detached probe process
#   CALL=2  carry .gguf-xz-1b         GGUF xz part 1 (part 2, .gguf-xz-2, came in an earlier call): the
#                                     driver below starts, detached (setsid)
# (the tree is 12.3 MB: with the 16 MB of wheels a call holds 36 MB of the 90.4 MB xz file, so the file
# travels as part-0 19.5 MB, part-1 19.5 MB, part-2 51.4 MB: `head -c`/`tail -c` of the xz stream)
#   CALL=3                            the driver goes on (restarted, resuming, if a call's end killed it)
#   CALL=4                            the driver's last stages; the first SHIP's int4 ONNX comes back in pieces
#   CALL=5  SHIP=plan4-heal1          the second one's pieces
#
# Every call runs WORK_SECONDS (give timeout_s at least WORK_SECONDS + 60), copying the results so far to
# $OUT/results.tar.gz every 20 s. The work does not stop at a call's end: the driver runs detached and
# each stage resumes what an earlier run left (heal checkpoints every 100 steps, the sweeps skip
# finished points), so a driver killed between calls loses only the work since then.
#
# The driver's jobs, side by side on the one GPU:
# - goal: benchmarks/gpu_heal.sh, every parameter healed on WikiText-2 valid, public-domain books and
#   the teacher's samples (0.3/0.3/0.4), the learning-rate schedule measured to end after
#   TRAIN_SECONDS of training:
#     plan0:heal0  20% of all parameters, sensitivity split (--scope all)      float   issue 14 goal (+5%)
#     plan1:heal0  30% of all parameters                                       float   issue 14 goal (+10%)
#     plan2:heal1  10% of FC, svd-llm sensitivity ranks                        int4    a file to ship
#     plan4:heal1  5% of FC, svd-llm sensitivity ranks                         int4    a file to ship
#     plan3:heal1  the dense model itself (quantization-aware training)        int4    the reference
#   then the full-text evaluation (float and int4 simulated bit-exactly), then the two files to ship
#   exported as int4 ONNX (symmetric blocks of 32: zero points made post-training int4 of this model
#   worse, 24.51 against 22.78 on 4,096 test tokens, docs/healing.md).
# - heal02, heal03: the heal grid's 20% and 30% points (svd-llm x uniform/surgical/sensitivity, 500
#   steps x 8 x 512 tokens, 16,384 test tokens), resumed from the 10% points' JSON
#
# SESSION=tiered (the sixth session, issues 14 and 17): the frequency-tiered table and shared head
# (`svd-tiered:ratio=2`: the 4,096 most frequent tokens exact, the others in two weighted low-rank tiers;
# the head reads half the table's bytes per token). Same calls (CALL=1..3 carry the wheels and GGUF parts,
# then the driver runs detached); its jobs, side by side:
#     plan0:heal0  svd-tiered:ratio=2 alone                                  float   issue 14 head goal (+2%)
#     plan0:heal1  svd-tiered:ratio=2 alone                                  int4    a file to ship (dense body)
#     plan1:heal1  5% of FC (svd-llm sensitivity ranks) + svd-tiered:ratio=2 int4    a file to ship
#   then the full-text evaluation (every plan unhealed too: the head's training-free figure) and both int4
#   files exported (SHIP=plan0-heal1, then SHIP=plan1-heal1, bring them back in pieces).
#
# SESSION=alice (the seventh session, issue 17's second text): the 5%-of-FC file to ship (the fifth session's
# plan4, the same compression), healed for int4 on text nearer the second held-out text. Its fifth-session
# heal (valid 0.3, books 0.3, samples 0.4) left it +16% on Alice against +4% on WikiText-2. Side by side:
#     plan0:heal0  valid 0.15, books 0.15, Moby-Dick 0.3, samples 0.4          int4 (blocks of 32)
#     plan0:heal1  books 0.25, Moby-Dick 0.35, samples 0.4 (no WikiText-2)    int4 (blocks of 32)
#     plan0:heal2  as heal0                                                    int4, blocks of 64 (4.5 bits)
#   the samples' prompts come from valid, books and Moby-Dick; then the full-text evaluation (int4 at blocks
#   of 32 and 64, simulated) and the three int4 exports (heal2's with --block-size 64).
#   Its calls (the tree is 15.0 MB now, so the xz file travels in three parts of 31.0/31.0/28.4 MB):
#     WORK_SECONDS=0 carry .whl .gguf-xz-3a;  WORK_SECONDS=0 carry .gguf-xz-3b;
#     WORK_SECONDS=470 carry .gguf-xz-3c (the driver starts), then WORK_SECONDS=470 until it is done;
#     then `OUT=$OUT benchmarks/gpu_ship.sh /tmp/tensoredge-alice/heal/onnx-plan0-heal0 1 4` and so on, 4 pieces
#     a call (64 MiB). The whole session took 1,361 s of device time.
#
# SESSION=int8 (the eighth session, issue 17's 8-bit class): can a compressed file beat the 8-bit ones
# (Q8_0 144.8 MB, 17.49 / 17.23; our dense int8 151.6 MB at blocks of 32, 143.2 MB at blocks of 64)?
# Int8 at blocks of 64 (8.5 bits a weight, fp32 scales) puts 3% or 5% of FC removed at about 140 / 138 MB;
# healed for that int8, each must land within about +0.5% of dense. (Blocks of 128 would be smaller, but
# the dense model's int8 export at blocks of 128 fails the exporter's parity gate at accuracy level 4:
# cached against full decoding 0.058, limit 0.05.) The compressed model starts near the teacher, so the
# int4 runs' peak learning rate (3e-4) may move it further than it needs: a third of it is tried too.
# Side by side, each on heal0's text of SESSION=alice, int8 at blocks of 64:
#     plan0:heal0  3% of FC (svd-llm sensitivity ranks)   lr 3e-4
#     plan0:heal1  3% of FC                               lr 1e-4
#     plan1:heal1  5% of FC                               lr 1e-4
#   then the full-text evaluation (float and int8 at blocks of 64, simulated; the plans unhealed too) and
#   the three int8 exports (--block-size 64; about 140 MB each: three calls of 4 pieces each to bring one
#   back). Same calls as SESSION=alice (the GGUF's xz parts: 25.0 MB with the wheels, then 40.0, then
#   25.4 MB). A dry run of these stages on tiny-gpt2 (DEVICE=cpu, blocks of 128) passed.
# SESSION=int8-low: in SESSION=int8 the 3% plan's training KL rose from its start at both learning rates
# (lr 3e-4: 0.032 over the first 80 steps, 0.078 by step 400; lr 1e-4: 0.020, then 0.029; the 5% plan at
# 1e-4: 0.037, then 0.036), and the lent machine was lost before those runs ended. So the 3% plan alone,
# healed at lr 1e-4, 3e-5 and 1e-5 side by side, on a shorter schedule (LOW_TRAIN_SECONDS, default 300 s)
# and 1.5M tokens of samples (LOW_GEN_TOKENS), to fit what was left of the session's device time. On a
# machine that ran SESSION=int8, its teacher, samples and compressed plan are shared (symlinks). Run on
# 2026-12-02 (benchmarks/results/int8-2026-12-02-h200): calls with .whl .whl-hub .gguf-xz-3a, then
# .gguf-xz-3b (WORK_SECONDS=0 both), then .gguf-xz-3c with WORK_SECONDS=500, then WORK_SECONDS=250 (the
# runs end, the evaluation and exports follow), then three calls of `benchmarks/gpu_ship.sh
# /tmp/tensoredge-int8-low/heal/onnx-plan0-heal1 FIRST 4` for its 10 pieces: about 940 s of device time.
# SESSION=int8-alice (run on 2026-12-02, the ninth session: benchmarks/results/int8-alice-2026-12-02-h200):
# can the int8 file close its Alice gap
# (17.320 through ONNX Runtime against Q8_0's 17.230; healing left +0.7% over dense on Alice, plain int8
# +0.2%)? The seventh session showed that the text mix moves quality between the two held-out texts, and
# int8-low's three runs were 0.06-0.08 apart, so the same plan healed side by side (lr 3e-5, 420-second
# schedules, int8 at blocks of 64, 3.0M tokens of samples):
#     plan0:heal0  int8-low's mix again, batch seed 1           (how far apart two runs land)
#     plan0:heal1  books .25, moby .35, samples .4 (no WikiText-2)
#     plan0:heal2  valid .1, books .2, moby .3, samples .4
# then the full texts and all three int8 exports. The driver picks the file to bring back
# (benchmarks/heal_pick.py --lowest: the run whose worse text is least behind the dense model's plain int8)
# into $W/best.txt, and SHIP=best ships it: the ship calls need no reading in between. A dry run of its
# stages and the pick on tiny-gpt2 (DEVICE=cpu, GEN_LENGTH=200: tiny-gpt2 takes 256 positions) passed.
# Calls as SESSION=int8-low's, then `SHIP=best SHIP_FIRST=1 SHIP_COUNT=4 WORK_SECONDS=545` (the runs end;
# the evaluation, exports and pick follow, and the first pieces come back in the same call). Its answer: no
# mix closed the Alice gap (17.289-17.323 against plain int8's 17.221), and the picked file (plan0-heal0)
# was lost with the machine before its second ship call: gpu_ship.sh now xz-compresses, so an int8 file is
# 8 pieces (this call's 4 and one more call's 4), not 10 in three calls.
# SESSION=long (run on 2026-12-02, the tenth session: benchmarks/results/long-2026-12-02-h200; +10.3% and +18.8%,
# 21.6M and 20.0M tokens, 1,580 s of device time in 5 calls): are the goal plans limited by
# training or by what the compression removed? The fifth session healed 20% and 30% of all parameters
# for a 600-second schedule beside three other runs (5.0M and 4.8M tokens): +13.0% and +24.7% on
# WikiText-2 (goals +5% and +10%); four times the fourth session's training had moved them from +19.1%
# and +37.6%. The same plans and text (valid .3, books .3, samples .4, lr 3e-4, batch 12 x 512) side by
# side with the GPU to themselves (the fifth session's shared it with three more runs and two sweeps),
# for an 800-second schedule (LONG_TRAIN_SECONDS), on 6.0M tokens of samples (LONG_GEN_TOKENS) so that
# more training is not more repetition, recording the held-out curve as it goes (16,384 tokens of each
# text every 150 steps, heal.json): about 3 times the tokens each (three runs side by side made
# 14k tokens/s each in SESSION=int8-alice). Float only, no export (nothing to ship). Calls as
# SESSION=int8-alice's, every work call WORK_SECONDS=545: about 100 s of set-up, ~350 s before training,
# 800 s of training, ~60 s of evaluation: about 1,350 of the 1,800 s, leaving room for one mishap. A dry run of its stages on tiny-gpt2 (DEVICE=cpu, 20k tokens of
# samples, 30-second schedules, 2,048 tokens of each text) passed.
# SESSION=sources (issue 14 items 2 and 4; run on 2026-12-03, the eleventh session:
# benchmarks/results/sources-2026-12-03-h200, 1,417 s of device time in 6 calls, one set-up call lost to a
# machine handed back between calls 1 and 2):
# - item 2, which distillation text heals best on its own: the 20% goal plan healed on each source alone,
#   and on the mix, side by side, for a 300-second schedule (SOURCES_TRAIN_SECONDS), with the held-out
#   curve every 50 steps (the first 16,384 tokens of each text):
#     plan0:heal0 valid alone   plan0:heal1 books alone   plan0:heal2 Moby-Dick alone
#     plan0:heal3 the teacher's samples alone (3.0M tokens, prompted from valid and books)
#     plan0:heal4 the mix of every earlier session (valid .3, books .3, samples .4)
#   then the full texts (healed and unhealed); float only, no export.
# - item 4, the embedding and head variants after healing: `sweep embedding --heal` at ratio 2 for the
#   frequency-tiered TT, TT-matrix, SVD table and frequency-tiered SVD, each with the head dense, shared and
#   low-rank (12 entries, 250 steps of 8 x 512 tokens each, scored on the first 16,384 test tokens before
#   and after), started once the samples are written (their generation fills the GPU's memory); it resumes
#   from its partial JSON across calls.
# Calls as SESSION=long's. Estimated: ~130 s of set-up, ~250 s before training, 300 s + curves, ~60 s of
# evaluation; the sweep about 950 s after the samples: about 1,300 of the 1,800 s. A dry run of its stages
# on tiny-gpt2 passed (DEVICE=cpu MODEL=tiny-gpt2 SOURCES_GEN_TOKENS=20000 GEN_LENGTH=200 SOURCES_TRAIN_SECONDS=30
# SOURCES_HEAL_ARGS="--batch 4 --seq-len 128 --eval-every 20 --curve-tokens 1024" SWEEP_HEAL_STEPS=2
# SWEEP_TOKENS=256 SWEEP_SEQ_LEN=128 EVAL_ARGS="--max-tokens 2048": tiny-gpt2 takes 256 positions).
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
SESSION=${SESSION:-ship}
W=/tmp/tensoredge-$SESSION
SHIP=${SHIP:-plan2-heal1}
mkdir -p "$W/logs"

driver() {  # everything, in the background of the calls; resumable
    echo $$ > "$W/driver.pid"
    export WORK=$W/heal
    export PLANS="--fc svd-llm --scope all --remove 0.2 --alloc sensitivity --calibration valid,books|\
--fc svd-llm --scope all --remove 0.3 --alloc sensitivity --calibration valid,books|\
--fc svd-llm --remove 0.1 --alloc sensitivity --calibration valid,books|dense|\
--fc svd-llm --remove 0.05 --alloc sensitivity --calibration valid,books"
    export HEALS="--data valid:0.3,books:0.3,generated=@gen0:0.4|\
--data valid:0.3,books:0.3,generated=@gen0:0.4 --quant int4"
    export RUNS="0:0 1:0 2:1 4:1 3:1" SHARE_PROFILE=1 THREADS=2
    export GENS="1.0:1.0" GEN_TOKENS=3000000 GEN_PROMPTS=valid,books
    export HEAL_ARGS="--batch 12 --seq-len 512 --eval-every 0 --checkpoint-every 100"
    export TRAIN_SECONDS=${TRAIN_SECONDS:-600} PROBE_SECONDS=40
    export QUANT_EVAL=int4 EVAL_UNHEALED=0
    export EXPORTS="plan2-heal1 plan4-heal1" EXPORT_ARGS="--precision int4"
    if [ "$SESSION" = tiered ]; then
        export PLANS="--embedding svd-tiered:ratio=2|\
--fc svd-llm --remove 0.05 --alloc sensitivity --calibration valid,books --embedding svd-tiered:ratio=2"
        export RUNS="0:0 0:1 1:1" EVAL_UNHEALED=1 EXPORTS="plan0-heal1 plan1-heal1"
    fi
    if [ "$SESSION" = alice ]; then
        export PLANS="--fc svd-llm --remove 0.05 --alloc sensitivity --calibration valid,books"
        export HEALS="--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int4|\
--data books:0.25,moby:0.35,generated=@gen0:0.4 --quant int4|\
--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int4 --quant-block 64"
        export RUNS="0:0 0:1 0:2" GEN_PROMPTS=valid,books,moby QUANT_EVAL=int4,int4-b64
        export EXPORTS="plan0-heal0 plan0-heal1 plan0-heal2" EXPORT_ARGS_plan0_heal2="--precision int4 --block-size 64"
    fi
    if [ "$SESSION" = int8 ]; then
        export PLANS="--fc svd-llm --remove 0.03 --alloc sensitivity --calibration valid,books|\
--fc svd-llm --remove 0.05 --alloc sensitivity --calibration valid,books"
        export HEALS="--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64|\
--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 1e-4"
        export RUNS="0:0 0:1 1:1" GEN_PROMPTS=valid,books,moby QUANT_EVAL=int8-b64 EVAL_UNHEALED=1
        export EXPORTS="plan0-heal0 plan0-heal1 plan1-heal1" EXPORT_ARGS="--precision int8 --block-size 64"
    fi
    if [ "$SESSION" = int8-low ]; then  # SESSION=int8's 3% plan at lower learning rates, its folders shared
        export PLANS="--fc svd-llm --remove 0.03 --alloc sensitivity --calibration valid,books"
        export HEALS="--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 1e-4|\
--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 3e-5|\
--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 1e-5"
        export RUNS="0:0 0:1 0:2" GEN_PROMPTS=valid,books,moby QUANT_EVAL=int8-b64 EVAL_UNHEALED=1
        export EXPORTS="plan0-heal1 plan0-heal2" EXPORT_ARGS="--precision int8 --block-size 64"
        export TRAIN_SECONDS=${LOW_TRAIN_SECONDS:-300} GEN_TOKENS=${LOW_GEN_TOKENS:-1500000}
    fi
    if [ "$SESSION" = int8-alice ]; then
        export PLANS="--fc svd-llm --remove 0.03 --alloc sensitivity --calibration valid,books"
        export HEALS="--data valid:0.15,books:0.15,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 3e-5 --seed 1|\
--data books:0.25,moby:0.35,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 3e-5|\
--data valid:0.1,books:0.2,moby:0.3,generated=@gen0:0.4 --quant int8 --quant-block 64 --lr 3e-5"
        export RUNS="0:0 0:1 0:2" GEN_PROMPTS=valid,books,moby QUANT_EVAL=int8-b64 EVAL_UNHEALED=0
        export EXPORTS="plan0-heal0 plan0-heal1 plan0-heal2" EXPORT_ARGS="--precision int8 --block-size 64"
        export TRAIN_SECONDS=${TRAIN_SECONDS_INT8:-420}
    fi
    if [ "$SESSION" = long ]; then  # issue 14's goal plans: the fifth session's setting, a longer schedule
        export PLANS="--fc svd-llm --scope all --remove 0.2 --alloc sensitivity --calibration valid,books|\
--fc svd-llm --scope all --remove 0.3 --alloc sensitivity --calibration valid,books"
        export HEALS="--data valid:0.3,books:0.3,generated=@gen0:0.4"
        export RUNS="0:0 1:0" QUANT_EVAL= EVAL_UNHEALED=1 EXPORTS=
        # the curve of held-out perplexity against tokens seen (16,384 tokens of each text, every 150 steps)
        export HEAL_ARGS="--batch 12 --seq-len 512 --eval-every 150 --curve-tokens 16384 --checkpoint-every 100"
        export TRAIN_SECONDS=${LONG_TRAIN_SECONDS:-800} GEN_TOKENS=${LONG_GEN_TOKENS:-6000000}
    fi
    if [ "$SESSION" = sources ]; then  # issue 14 item 2: each distillation text alone, the 20% plan
        export PLANS="--fc svd-llm --scope all --remove 0.2 --alloc sensitivity --calibration valid,books"
        export HEALS="--data valid:1|--data books:1|--data moby:1|--data generated=@gen0:1|\
--data valid:0.3,books:0.3,generated=@gen0:0.4"
        export RUNS="0:0 0:1 0:2 0:3 0:4" QUANT_EVAL= EVAL_UNHEALED=1 EXPORTS=
        export HEAL_ARGS=${SOURCES_HEAL_ARGS:-"--batch 12 --seq-len 512 --eval-every 50 --curve-tokens 16384 --checkpoint-every 100"}
        export TRAIN_SECONDS=${SOURCES_TRAIN_SECONDS:-300} GEN_TOKENS=${SOURCES_GEN_TOKENS:-3000000}
    fi
    local parts=(heal02 heal03)
    [ "$SESSION" = ship ] || parts=()
    if [ "$SESSION" = sources ]; then  # issue 14 item 4: the embedding and head variants, healed
        (
            until [ -f "$WORK/gen0/samples.json" ] && [ -f "$WORK/dense/manifest.json" ]; do sleep 5; done
            OMP_NUM_THREADS=2 python3 -m toolkit.cli sweep embedding --model "$WORK/dense" --out "$W/heads" \
                --ratios 2 --head-ratios 2 --variants "tt tiers by freq,ttm,svd-table,svd tiers by freq" \
                --heal "${SWEEP_HEAL_STEPS:-250}" --heal-batch 8 --heal-seq-len "${SWEEP_SEQ_LEN:-512}" --heal-lr 3e-4 --heal-tokens 1000000 \
                --max-tokens "${SWEEP_TOKENS:-16385}" --device "${DEVICE:-cuda}" >> "$W/logs/heads.log" 2>&1
        ) &
    fi
    for part in "${parts[@]}"; do
        mkdir -p "$W/$part"
        [ -f "$W/$part/fc-sweep.json" ] || cp benchmarks/results/grid-2026-12-02-h200/heal-grid/fc-sweep.json "$W/$part/"
    done
    stage() {  # stage NAME RESULTS: gpu_heal.sh's stages NAME, until they succeed once (each resumes)
        [ -f "$W/goal.${1// /-}.done" ] && return 0
        STAGES=$1 OUT=$2 benchmarks/gpu_heal.sh >> "$W/logs/goal.log" 2>&1 && touch "$W/goal.${1// /-}.done"
        return 0
    }
    (
        stage "gen compress heal" "$W/goal"
        stage eval "$W/goal" &  # the evaluation and the exports side by side
        stage export "$W/goal-export" &
        wait
        if [ "$SESSION" = int8-alice ]; then  # the file to bring back, so the ship calls need no reading
            python3 benchmarks/heal_pick.py "$WORK/logs" $EXPORTS --quant int8-b64 --texts wikitext2 alice --lowest > "$W/best.txt" \
                2>> "$W/logs/goal.log" || rm -f "$W/best.txt"
        fi
    ) &
    for part in "${parts[@]}"; do
        removal=0.${part#heal0}
        OMP_NUM_THREADS=2 python3 -m toolkit.cli sweep fc --model smollm2-135m --out "$W/$part" --max-tokens 16385 --methods svd-llm \
            --allocs uniform,surgical,sensitivity --removals "$removal" --heal 500 --heal-batch 8 --heal-seq-len 512 \
            --heal-lr 3e-4 --heal-tokens 1000000 --hopeless inf --device cuda >> "$W/logs/$part.log" 2>&1 &
    done
    wait
    echo "driver done $(date -u)"
}

collect() {  # $OUT/results.tar.gz: what is done so far (a call returns at most 8 files)
    local c=$W/collect
    rm -rf "$c"; mkdir -p "$c/goal"
    for name in heal02 heal03 heads; do
        mkdir -p "$c/$name"; cp "$W/$name"/*.{json,md,png} "$c/$name/" 2>/dev/null || true
        tail -n 100 "$W/logs/$name.log" 2>/dev/null | grep -v "logging.cc" > "$c/$name/$name.log" || true
    done
    cp "$W/goal"/* "$c/goal/" 2>/dev/null || true
    tail -n 150 "$W/logs/goal.log" > "$c/goal/goal.log" 2>/dev/null || true
    tail -n 50 "$W/driver.log" > "$c/driver.log" 2>/dev/null || true
    for log in "$W"/heal/logs/*.log; do [ -f "$log" ] && tail -n 25 "$log" > "$c/goal/$(basename "$log")"; done
    cp "$W"/heal/logs/*.{json,options} "$c/goal/" 2>/dev/null || true
    for heal in "$W"/heal/plan*-heal*/heal.json; do
        [ -f "$heal" ] && cp "$heal" "$c/goal/$(basename "$(dirname "$heal")").heal.json"
    done
    tar czf "$OUT/results.tar.gz.tmp" -C "$c" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

if [ "${1:-}" = driver ]; then driver; exit 0; fi

begin=$(date +%s)
source benchmarks/gpu_setup.sh
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
if [ -f "$W/probe.pid" ]; then  # does a detached process outlive a call?
    kill -0 "$(cat "$W/probe.pid")" 2>/dev/null && echo "the detached probe of call 1 is alive" \
        || echo "the detached probe of call 1 is gone: a call's end kills the driver, which resumes"
else
    setsid nohup sleep 3000 > /dev/null 2>&1 < /dev/null & echo $! > "$W/probe.pid"
fi
[ -n "$GGUF" ] || exit 0
export GGUF
if [ "$SESSION" = int8-low ] && [ -d /tmp/tensoredge-int8/heal/plan0 ] && [ ! -e "$W/heal/dense" ]; then
    # on the machine that ran SESSION=int8: its teacher, samples and plan 0
    mkdir -p "$W/heal"
    for x in dense gen0 plan0 profile-valid+books.json; do ln -s "/tmp/tensoredge-int8/heal/$x" "$W/heal/$x"; done
fi
if ! { [ -f "$W/driver.pid" ] && kill -0 "$(cat "$W/driver.pid")" 2>/dev/null; }; then
    [ -f "$W/driver.pid" ] && echo "the driver is not running: (re)starting it"
    if [ ! -d "$W/repo" ]; then  # its own copy of the tree: a later call may replace the call's folder
        mkdir -p "$W/repo.tmp"
        tar --exclude='./.gguf*' --exclude='./.whl*' --exclude='./.ray*' -cf - . | tar -xf - -C "$W/repo.tmp"
        mv "$W/repo.tmp" "$W/repo"
    fi
    rm -f "$W/driver.pid"
    (cd "$W/repo" && PYTHONPATH="/tmp/site:$W/repo" setsid nohup bash benchmarks/run_gpu_ship_session.sh driver \
        >> "$W/driver.log" 2>&1 < /dev/null &)
    for _ in $(seq 50); do [ -f "$W/driver.pid" ] && break; sleep 0.2; done
fi
while [ $(( $(date +%s) - begin )) -lt "${WORK_SECONDS:-540}" ] && kill -0 "$(cat "$W/driver.pid")" 2>/dev/null; do
    sleep 20; collect
    echo "[$(( $(date +%s) - begin )) s] $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)" \
        "$(ls "$W"/heal/plan*-heal*/heal.json 2>/dev/null | wc -l) healed"
done
collect
if [ "$SHIP" = best ]; then SHIP=$(cat "$W/best.txt" 2>/dev/null || echo none); echo "the file to bring back: $SHIP"; fi
if [ -f "$W/heal/onnx-$SHIP/export.json" ]; then
    OUT=$OUT benchmarks/gpu_ship.sh "$W/heal/onnx-$SHIP" "${SHIP_FIRST:-1}" "${SHIP_COUNT:-4}" || true
fi
for log in "$W"/logs/*.log; do echo "== $log"; tail -n 3 "$log" | cut -c1-250; done
for log in "$W"/heal/logs/heal-*.log; do [ -f "$log" ] && { echo "== $log"; tail -n 2 "$log" | cut -c1-250; }; done
cat "$W/goal/summary.txt" 2>/dev/null || true
