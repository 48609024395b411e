#!/usr/bin/env bash
# Pretraining, once per run folder: the two frozen encoders and the base flow-matching model.
#   RUN=runs/demo bash pipelines/pretrain.sh          (after pipelines/prepare-data.sh)
# Writes, in $RUN:
#   enc-disc.safetensors   the discriminator's feature space (self-supervised SimCLR by default:
#                          DRL reports self-supervised spaces make far better discriminators)
#   enc-eval.safetensors   the held-out evaluation space (a supervised CNN classifier; DRL must
#                          improve a space it was not trained in)
#   base.safetensors       the base model (conditional flow matching, label dropout for CFG)
#   *-metrics.jsonl        one JSON line per logged step of each training
#   test-eval.stats        statistics of the test split in the held-out space (for fid)
# Each product is skipped when it exists, so a killed run resumes where it stopped.
set -euo pipefail
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
ENC_DISC_KIND=${ENC_DISC_KIND:-simclr}        # simclr | classifier | none (a run whose discriminator works on pixels)
ENC_DISC_STEPS=${ENC_DISC_STEPS:-900}
ENC_EVAL_KIND=${ENC_EVAL_KIND:-classifier}
# 8000 steps (17 epochs) trains the held-out classifier to convergence: linear probe 0.923 on the
# test split, classifier accuracy 0.922 (docs/results.md); 1000 steps gave 0.88, too weak to judge.
ENC_EVAL_STEPS=${ENC_EVAL_STEPS:-8000}
ENC_EVAL_SEED=${ENC_EVAL_SEED:-101}          # the seed of the encoder measured in docs/results.md
ENC_BATCH=${ENC_BATCH:-128}
BASE_MODEL=${BASE_MODEL:-mlp-small}           # mlp-tiny | mlp-small | sit-tiny | sit-small
BASE_STEPS=${BASE_STEPS:-3000}
BASE_BATCH=${BASE_BATCH:-128}
BASE_LR=${BASE_LR:-5e-4}
BASE=${BASE:-$RUN/base.safetensors}           # where the base checkpoint goes
QUIET=${QUIET:---quiet}

log() { echo "pretrain: $*" >&2; }
mkdir -p "$RUN"
[ -s "$RUN/train.tzst" ] || { echo "pretrain: $RUN/train.tzst missing; run pipelines/prepare-data.sh first" >&2; exit 1; }

if [ "$ENC_DISC_KIND" != none ] && [ ! -s "$RUN/enc-disc.safetensors" ]; then
  log "discriminator encoder: $ENC_DISC_KIND, $ENC_DISC_STEPS steps"
  t0=$SECONDS
  embed train --kind "$ENC_DISC_KIND" -i "$RUN/train.tzst" -o "$RUN/enc-disc.safetensors" \
    --steps "$ENC_DISC_STEPS" --batch "$ENC_BATCH" --seed $((SEED + 2)) --threads "$THREADS" \
    --metrics "$RUN/enc-disc-metrics.jsonl" $QUIET
  log "  $(( SECONDS - t0 )) s"
fi

if [ ! -s "$RUN/enc-eval.safetensors" ]; then
  log "evaluation encoder: $ENC_EVAL_KIND, $ENC_EVAL_STEPS steps"
  t0=$SECONDS
  embed train --kind "$ENC_EVAL_KIND" -i "$RUN/train.tzst" -o "$RUN/enc-eval.safetensors" \
    --steps "$ENC_EVAL_STEPS" --batch "$ENC_BATCH" --seed "$ENC_EVAL_SEED" --threads "$THREADS" \
    --metrics "$RUN/enc-eval-metrics.jsonl" $QUIET
  log "  $(( SECONDS - t0 )) s"
fi

# Reference statistics of the held-out test split in both spaces (cached; fid reads them).
for space in eval disc; do
  if [ -s "$RUN/enc-$space.safetensors" ] && [ ! -s "$RUN/test-$space.stats" ]; then
    embed --encoder "$RUN/enc-$space.safetensors" --threads "$THREADS" -i "$RUN/test.tzst" $QUIET \
      | fid stats -o "$RUN/test-$space.stats" --threads "$THREADS"
  fi
done

if [ ! -s "$BASE" ]; then
  log "base model: $BASE_MODEL, $BASE_STEPS steps of $BASE_BATCH"
  t0=$SECONDS
  # --resume keeps a killed run's progress: the partial checkpoint is written every 500 steps.
  partial="$BASE.partial"
  if [ -s "$partial" ]; then from=(--resume "$partial")
  else from=(--model "$BASE_MODEL" --batch "$BASE_BATCH" --lr "$BASE_LR" --seed "$SEED"); fi
  train -i "$RUN/train.tzst" "${from[@]}" --steps "$BASE_STEPS" --threads "$THREADS" --save-every 500 \
    --metrics "$RUN/base-metrics.jsonl" --log-every 50 -o "$partial" $QUIET
  mv "$partial" "$BASE"
  log "  $(( SECONDS - t0 )) s"
fi
