#!/usr/bin/env bash
# The clean sit-tiny base of docs/results.md sections 0.3 and 0.4, and what DRL on it needs, from
# nothing, in one command. Every product is skipped when it exists and the long trainings resume
# from their last 500-step checkpoint, so a killed run (or a cron job started again) continues:
#   RUN=runs/sit bash pipelines/clean-base.sh
# Writes, in $RUN:
#   base-s10000.safetensors   sit-tiny, 10,000 constant-rate steps (lr 5e-4, batch 128, seed 0)
#   base-cool.safetensors     that run branched into a 3,000-step linear cooldown (to step 13,000)
#   enc-disc.safetensors      the discriminator's space: a supervised CNN on train half 2 only
#                             (images 30,000-59,999; drl.sh's real images come from half 1)
#   enc-eval.safetensors      the held-out evaluation classifier (8,000 steps, seed 101; no
#                             discriminator ever trains in it), and the test statistics
#   results.tsv               the base's row (evaluate.sh: FD, KID, precision/recall, class consistency)
# About 1.5 hours of a 2-core machine (2026-12-07). Then DRL at lambda 2 (results section 0.6):
#   RUN=runs/sit BASE=runs/sit/base-cool.safetensors DISC_FAKE=5000 DISC_REAL=5000 DISC_STEPS=25 DISC_HEAD=linear \
#     LAMBDA=2 LR=1e-4 ROUNDS=12 EVAL_EVERY=3 EVAL_N=2000 EVAL_STEPS=25 NAME=am-cool-l2 bash pipelines/drl.sh
# or with the better discriminator of section 0.4:
#   RUN=runs/sit BASE=runs/sit/base-cool.safetensors DISC_HEAD=mlp DISC_FAKE=25000 DISC_REAL=25000 \
#     DISC_MAX_STEPS=10000 DISC_STEPS=25 LAMBDA=1 LR=1e-4 ROUNDS=12 EVAL_EVERY=6 EVAL_N=2000 EVAL_STEPS=25 \
#     NAME=am-cool-mlp25k bash pipelines/drl.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUN=${RUN:-runs/sit}
THREADS=${THREADS:-2}
BASE_MODEL=${BASE_MODEL:-sit-tiny}
CONSTANT_STEPS=${CONSTANT_STEPS:-10000}   # constant learning rate, then
COOLDOWN_STEPS=${COOLDOWN_STEPS:-3000}    # the linear decay to zero
ENC_DISC_STEPS=${ENC_DISC_STEPS:-2000}
EVAL_N=${EVAL_N:-2000}
EVAL_STEPS=${EVAL_STEPS:-25}
export RUN THREADS EVAL_N EVAL_STEPS
log() { echo "clean-base: $*" >&2; }

bash "$here/prepare-data.sh" >/dev/null

# train_to OUT STEPS ARGS...: train (or resume) until the checkpoint OUT holds STEPS steps.
train_to() {
  local out=$1 steps=$2; shift 2
  [ -s "$out" ] && return 0
  local partial="$out.partial" from=("$@")
  [ -s "$partial" ] && from=(--resume "$partial")
  log "$(basename "$out"): to step $steps"
  local t0=$SECONDS
  train -i "$RUN/train.tzst" "${from[@]}" --steps "$steps" --threads "$THREADS" --save-every 500 \
    --metrics "${out%.safetensors}-metrics.jsonl" --log-every 50 --quiet -o "$partial"
  mv "$partial" "$out"
  log "  $(( SECONDS - t0 )) s"
}

const=$RUN/base-s$CONSTANT_STEPS.safetensors
train_to "$const" "$CONSTANT_STEPS" --model "$BASE_MODEL" --batch 128 --lr 5e-4 --seed 0
# The cooldown branch: the window is stored in the checkpoint as absolute steps, so resuming the
# branch's own partial checkpoint keeps it; only the first start passes it.
train_to "$RUN/base-cool.safetensors" $(( CONSTANT_STEPS + COOLDOWN_STEPS )) \
  --resume "$const" --cooldown "$COOLDOWN_STEPS"

if [ ! -s "$RUN/enc-disc.safetensors" ]; then
  log "discriminator encoder: classifier on train half 2, $ENC_DISC_STEPS steps"
  [ -s "$RUN/train-half2.tzst" ] || tensors head --skip 30000 -i "$RUN/train.tzst" -o "$RUN/train-half2.tzst"
  embed train --kind classifier -i "$RUN/train-half2.tzst" -o "$RUN/enc-disc.safetensors" \
    --steps "$ENC_DISC_STEPS" --batch 128 --seed 202 --threads "$THREADS" --metrics "$RUN/enc-disc-metrics.jsonl" --quiet
fi
# The evaluation classifier and the test statistics in both spaces (pretrain.sh's defaults are
# section 0.3's; the base exists, so it is not trained again).
ENC_DISC_KIND=none BASE="$RUN/base-cool.safetensors" bash "$here/pretrain.sh"

grep -q "^base-cool	" "$RUN/results.tsv" 2>/dev/null \
  || bash "$here/evaluate.sh" "$RUN/base-cool.safetensors" base-cool 0 >/dev/null
log "base-cool: $(grep "^base-cool	" "$RUN/results.tsv" | head -n 1)"
