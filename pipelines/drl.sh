#!/usr/bin/env bash
# DRL: stage 1 trains the discriminator once against the base model's samples; stage 2 runs
# rounds of   sample --record | discrim score [--grad] | rlstep   with an evaluation every few.
#   RUN=runs/demo bash pipelines/drl.sh                     (after pretrain.sh)
#   RUN=runs/demo NAME=drl-l5 LAMBDA=5 ROUNDS=40 bash pipelines/drl.sh
#   RUN=runs/demo NAME=grpo ALGO=grpo SAMPLER=precise STEPS=10 bash pipelines/drl.sh
# Everything lands in $RUN/$NAME: rounds/NNNN.safetensors (one checkpoint per round, written
# atomically by rlstep), rl-metrics.jsonl (rlstep's line per round), rounds.tsv (wall-clock per
# round), and rows of $RUN/results.tsv from evaluate.sh. A killed run resumes at the last
# complete round when started again with the same settings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
BASE=${BASE:-$RUN/base.safetensors}
ENC_DISC=${ENC_DISC:-$RUN/enc-disc.safetensors}   # or "pixels": identity features
# Stage 1: the discriminator (a class-conditional projection head on frozen features).
DISC_FAKE=${DISC_FAKE:-10000}          # base-model samples it sees
DISC_REAL=${DISC_REAL:-10000}          # training images it sees
DISC_SAMPLER=${DISC_SAMPLER:-euler}    # how the base model's fakes are drawn
DISC_STEPS=${DISC_STEPS:-50}
DISC_HEAD=${DISC_HEAD:-linear}        # linear (DRL), mlp, or quadratic (a Gaussian log ratio: can widen or narrow the features)
DISC_MAX_STEPS=${DISC_MAX_STEPS:-3000}  # early stopping on held-out loss usually ends it sooner
R1=${R1:-0}                            # R1 weight gamma on the real logit's image gradient
R1_EVERY=${R1_EVERY:-1}                # lazy R1: on every K-th step only, weighted K * gamma (StyleGAN2: 16)
DISC=${DISC:-$(default_disc "$RUN" "$DISC_HEAD" "$R1" "$R1_EVERY")}   # shared by every run on this base with these settings
REWARD=${REWARD:-discrim}              # discrim (the DRL logit) | brightness | confidence (deliberately hackable rewards: no stage 1)
REWARD_CLASSIFIER=${REWARD_CLASSIFIER:-}  # REWARD=confidence: a classifier (embed train --kind classifier) whose
                                       # softmax probability of the requested class is the reward; not the
                                       # evaluation encoder, which judges the result. grpo, crd, nft only.
# Beyond the paper (which holds the discriminator fixed): every DISC_REFRESH rounds, warm-start the
# discriminator (`discrim train --init-from`, Adam state kept) on DISC_REFRESH_FAKE fresh samples of
# the current policy against the same real images. The KL anchor (--ref) stays on the base.
DISC_REFRESH=${DISC_REFRESH:-0}        # 0: fixed discriminator (the paper's DRL)
DISC_REFRESH_FAKE=${DISC_REFRESH_FAKE:-2000}
DISC_REFRESH_STEPS=${DISC_REFRESH_STEPS:-200}
EMBED=${EMBED:-}                       # a replacement feature stage (a command reading and writing
                                       # streams), e.g. "python3 examples/pca_embed.py --encoder pca.safetensors";
                                       # default: embed --encoder $ENC_DISC. Not with am (no reward gradient).
# Stage 2: RL rounds.
ALGO=${ALGO:-am}                       # am (adjoint matching, DRL) | grpo | crd | nft
NAME=${NAME:-drl-$ALGO}
ROUNDS=${ROUNDS:-20}
N=${N:-256}                            # rollouts per round
STEPS=${STEPS:-20}                     # sampler steps of a rollout
case "$ALGO" in
  am) SAMPLER=${SAMPLER:-memoryless-ll} ;;
  grpo) SAMPLER=${SAMPLER:-precise} ;;
  *) SAMPLER=${SAMPLER:-euler} ;;        # forward-process objectives need only the final images
esac
ETA=${ETA:-}                           # empty: the sampler's default (am needs 1)
GROUP=${GROUP:-16}                     # samples per label per group (grpo, crd, nft)
LAMBDA=${LAMBDA:-10}                   # am: reward weight (KL weight 1/lambda)
LR=${LR:-1e-4}
EPOCHS=${EPOCHS:-2}
MINIBATCH=${MINIBATCH:-64}
RL_FLAGS=${RL_FLAGS:-}                 # anything else for rlstep, e.g. "--beta 0.01 --clip-range 1e-3"
BUDGET_SECONDS=${BUDGET_SECONDS:-0}     # >0: start no new round once the rounds took this long (equal wall-clock comparisons)
EVAL_EVERY=${EVAL_EVERY:-5}            # evaluate every K rounds (and after the last); 0: never
RESULTS=${RESULTS:-$RUN/results.tsv}
export RUN THREADS RESULTS

log() { echo "drl[$NAME]: $*" >&2; }
# The discriminator's encoder only matters for the discriminator's reward (not with a replacement
# EMBED stage, nor for the hackable rewards, which a run folder without one must be able to use).
for f in "$BASE" "$RUN/train.tzst" $([ "$REWARD" != discrim ] || [ -n "$EMBED" ] || [ "$ENC_DISC" = pixels ] || echo "$ENC_DISC"); do
  [ -s "$f" ] || { echo "drl: $f missing; run pipelines/prepare-data.sh and pipelines/pretrain.sh first" >&2; exit 1; }
done
if [ "$REWARD" = confidence ]; then
  [ -s "$REWARD_CLASSIFIER" ] || { echo "drl: REWARD=confidence needs REWARD_CLASSIFIER=<a classifier checkpoint>" >&2; exit 2; }
  [ "$ALGO" != am ] || { echo "drl: REWARD=confidence has no image gradient; use ALGO=grpo, crd or nft" >&2; exit 2; }
fi
if [ -n "$EMBED" ] && [ "$ALGO" = am ]; then
  echo "drl: ALGO=am needs the reward's image gradient through a Swift encoder; use EMBED with grpo (or crd, nft)" >&2; exit 2
fi
if [ -n "$EMBED" ]; then read -r -a embed_cmd <<<"$EMBED"
elif [ "$ENC_DISC" = pixels ]; then embed_cmd=(embed --pixels --threads "$THREADS" --quiet)
else embed_cmd=(embed --encoder "$ENC_DISC" --threads "$THREADS" --quiet); fi
EXP=$RUN/$NAME
mkdir -p "$EXP/rounds"

# ---- stage 1: the discriminator, trained once on (data, base samples) and then frozen ----
if [ "$REWARD" = discrim ] && [ ! -s "$DISC" ]; then
  log "stage 1: $DISC_FAKE base samples vs $DISC_REAL training images, head $DISC_HEAD, R1 $R1"
  t0=$SECONDS
  tmp=$(mktemp -d "$RUN/.disc.XXXXXX")
  # The base model's samples are kept: every discriminator of this base (other spaces, heads, R1)
  # trains on the same fakes, and sampling them is the slow part for a transformer.
  # Named after the base checkpoint, so a run from another base (BASE=...) never reuses them.
  fakes=$RUN/$(basename "$BASE" .safetensors)-fakes-$DISC_SAMPLER$DISC_STEPS-n$DISC_FAKE.tzst
  if [ ! -s "$fakes" ]; then
    sample --model "$BASE" --n "$DISC_FAKE" --sampler "$DISC_SAMPLER" --steps "$DISC_STEPS" --seed $((SEED + 777)) \
      --threads "$THREADS" --quiet -o "$fakes"
  fi
  "${embed_cmd[@]}" < "$fakes" > "$tmp/fake.tzst"
  tensors head -n "$DISC_REAL" -i "$RUN/train.tzst" | "${embed_cmd[@]}" > "$tmp/real.tzst"
  r1=(); [ "$R1" != 0 ] && r1=(--r1 "$R1" --r1-every "$R1_EVERY" --encoder "$ENC_DISC")
  discrim train --real "$tmp/real.tzst" --fake "$tmp/fake.tzst" --head "$DISC_HEAD" "${r1[@]}" \
    --max-steps "$DISC_MAX_STEPS" --seed "$SEED" --threads "$THREADS" --quiet -o "$DISC" > "$DISC.report.json"
  rm -rf "$tmp"
  echo $(( SECONDS - t0 )) > "$DISC.seconds"   # stage 1's wall-clock, for equal-compute baselines
  log "  $(( SECONDS - t0 )) s; held-out: $(jq -c '.heldout // .held_out // .' "$DISC.report.json" | head -c 300)"
fi

# ---- stage 2: rounds ----
eval_round() {  # $1 = checkpoint, $2 = round
  [ "$EVAL_EVERY" -gt 0 ] || return 0
  grep -q "^$NAME	$2	" "$RESULTS" 2>/dev/null && return 0   # already evaluated (resumed run)
  bash "$here/evaluate.sh" "$1" "$NAME" "$2" >/dev/null
  log "  eval round $2: $(grep "^$NAME	$2	" "$RESULTS" | cut -f3-6 | tr '\t' ' ') (fd_eval fd_simclr kid kid_se)"
}
# The base's row: label "base" for $RUN/base.safetensors, else the checkpoint's name.
base_label=base; [ "$BASE" = "$RUN/base.safetensors" ] || base_label=$(basename "$BASE" .safetensors)
if [ "$EVAL_EVERY" -gt 0 ] && ! grep -q "^$base_label	0	" "$RESULTS" 2>/dev/null; then
  bash "$here/evaluate.sh" "$BASE" "$base_label" 0 >/dev/null
  log "  eval $base_label: $(grep "^$base_label	0	" "$RESULTS" | cut -f3-6 | tr '\t' ' ') (fd_eval fd_simclr kid kid_se)"
fi

confidence_reward() {  # the classifier's logits, then their softmax probability of y as the reward
  embed classify --encoder "$REWARD_CLASSIFIER" --threads "$THREADS" --quiet | tensors reward --class-confidence
}
score_with() {  # $1 = discriminator checkpoint: sets the scoring stage
  if [ "$REWARD" = brightness ]; then
    score=(tensors reward --brightness)
  elif [ "$REWARD" = confidence ]; then
    score=(confidence_reward)
    return 0
  else
    score=(discrim score --model "$1" --threads "$THREADS")
    # discrim recomputes the features from x through the encoder (with --grad, their image gradient
    # too), unless a replacement EMBED stage already added them.
    [ -z "$EMBED" ] && score+=(--encoder "$ENC_DISC")
  fi
  [ "$ALGO" = am ] && score+=(--grad)
  return 0
}
score_with "$DISC"
cur_disc=$DISC
# refresh_disc ROUND POLICY: the discriminator for rounds ROUND.. , warm-started from the current
# one on fresh samples of POLICY (kept in $EXP/disc/ROUND.safetensors; a resumed run reuses it).
refresh_disc() {
  local out=$EXP/disc/$(printf %04d "$1").safetensors
  if [ ! -s "$out" ]; then
    mkdir -p "$EXP/disc"
    local tmp; tmp=$(mktemp -d "$EXP/.refresh.XXXXXX")
    sample --model "$2" --no-ema --n "$DISC_REFRESH_FAKE" --offset $(( 1000000 + $1 * DISC_REFRESH_FAKE )) --sampler "$DISC_SAMPLER" \
        --steps "$DISC_STEPS" --seed $((SEED + 778)) --threads "$THREADS" --quiet | "${embed_cmd[@]}" > "$tmp/fake.tzst"
    # the real side is the same at every refresh: its features are computed once per run
    local real=$EXP/disc/real-features.tzst
    if [ ! -s "$real" ]; then
      tensors head -n "$DISC_REAL" -i "$RUN/train.tzst" | "${embed_cmd[@]}" > "$tmp/real.tzst"
      mv "$tmp/real.tzst" "$real"
    fi
    local r1=(); [ "$R1" != 0 ] && r1=(--r1 "$R1" --r1-every "$R1_EVERY" --encoder "$ENC_DISC")
    discrim train --real "$real" --fake "$tmp/fake.tzst" --head "$DISC_HEAD" "${r1[@]}" --init-from "$cur_disc" \
      --max-steps "$DISC_REFRESH_STEPS" --seed $((SEED + $1)) --threads "$THREADS" --quiet -o "$out" > "$out.report.json"
    rm -rf "$tmp"
    log "  discriminator refreshed for round $1: $(jq -c '.heldout' "$out.report.json" | head -c 200)"
  fi
  cur_disc=$out
  score_with "$cur_disc"
}
sampling=(--sampler "$SAMPLER" --steps "$STEPS")
case "$ALGO" in am|grpo) sampling+=(--record) ;; esac   # trajectories and log-probs
[ -n "$ETA" ] && sampling+=(--eta "$ETA")
[ "$ALGO" != am ] && sampling+=(--group "$GROUP")
# BASE may be a checkpoint rlstep wrote (a DRL run's round): then its raw weights are the start and
# the KL reference, as evaluate.sh evaluates it.
base_rl=$(tensors info --meta rl.algo "$BASE")
ref_weights=(); [ -n "$base_rl" ] && ref_weights=(--ref-raw)
rlflags=(--lr "$LR" --epochs "$EPOCHS" --minibatch "$MINIBATCH" --seed "$SEED" --threads "$THREADS")
[ "$ALGO" = am ] && rlflags+=(--lambda "$LAMBDA")
# shellcheck disable=SC2206
rlflags+=($RL_FLAGS)

prev=$BASE
last=0
for r in $(seq 1 "$ROUNDS"); do
  ck=$EXP/rounds/$(printf %04d "$r").safetensors
  if [ -s "$ck" ]; then
    prev=$ck; last=$r
    # a resumed run scores with the discriminator its next round would have had
    [ -s "$EXP/disc/$(printf %04d "$r").safetensors" ] && { cur_disc=$EXP/disc/$(printf %04d "$r").safetensors; score_with "$cur_disc"; }
    continue
  fi
  if [ "$BUDGET_SECONDS" -gt 0 ] && [ -s "$EXP/rounds.tsv" ] \
     && [ "$(awk 'NR > 1 { s += $2 } END { print s + 0 }' "$EXP/rounds.tsv")" -ge "$BUDGET_SECONDS" ]; then
    log "budget of $BUDGET_SECONDS s spent after $last rounds"
    eval_round "$prev" "$last"
    break
  fi
  if [ "$REWARD" = discrim ] && [ "$DISC_REFRESH" -gt 0 ] && [ "$r" -gt 1 ] && [ $(( (r - 1) % DISC_REFRESH )) = 0 ]; then
    refresh_disc "$r" "$prev"
  fi
  # Rollouts come from the raw policy rlstep trains (am, grpo: on-policy), or from the sampling
  # snapshot rlstep keeps (crd, nft); the base model's first round from its EMA weights.
  weights=() stage=()
  if [ "$prev" != "$BASE" ]; then
    case "$ALGO" in crd|nft) weights=(--weights sampling) ;; *) weights=(--no-ema) ;; esac
  elif [ -n "$base_rl" ]; then
    # A base that rlstep wrote (preference RL after DRL): its raw weights are the policy that was
    # evaluated, and the new stage starts with fresh optimizer state (rlstep --new-stage).
    weights=(--no-ema) stage=(--new-stage)
  fi
  t0=$SECONDS
  sample --model "$prev" "${weights[@]}" --n "$N" --offset $(( (r - 1) * N )) --seed "$SEED" "${sampling[@]}" \
      --threads "$THREADS" --quiet \
    | if [ -n "$EMBED" ]; then "${embed_cmd[@]}"; else cat; fi \
    | "${score[@]}" \
    | rlstep --algo "$ALGO" --model "$prev" --ref "$BASE" "${ref_weights[@]}" "${stage[@]}" --out "$ck" --metrics "$EXP/rl-metrics.jsonl" "${rlflags[@]}"
  secs=$(( SECONDS - t0 ))
  [ -s "$EXP/rounds.tsv" ] || printf 'round\tseconds\treward_mean\tloss\n' > "$EXP/rounds.tsv"
  line=$(tail -n 1 "$EXP/rl-metrics.jsonl")
  printf '%s\t%s\t%s\t%s\n' "$r" "$secs" "$(jq -r '.reward_mean' <<<"$line")" "$(jq -r '.loss' <<<"$line")" >> "$EXP/rounds.tsv"
  log "round $r: ${secs}s reward $(jq -r '.reward_mean' <<<"$line") loss $(jq -r '.loss' <<<"$line")"
  prev=$ck; last=$r
  if [ "$EVAL_EVERY" -gt 0 ] && { [ $(( r % EVAL_EVERY )) = 0 ] || [ "$r" = "$ROUNDS" ]; }; then eval_round "$ck" "$r"; fi
done
ln -sfn "rounds/$(printf %04d "$last").safetensors" "$EXP/final.safetensors"
log "done: $EXP/final.safetensors"
