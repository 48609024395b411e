#!/usr/bin/env bash
# The reward of every round's policy on one common scale: N deterministic ODE samples (the same
# noise for every round and every run) scored by the discriminator. A rollout's own reward depends
# on the sampler that drew it (an SDE sampler's noisy images score lower), so runs with different
# samplers compare only on this curve.
#   RUN=runs/full DISC=runs/full/disc-pixels-mlp.safetensors ENC_DISC=pixels bash pipelines/reward-curve.sh grpo-precise-pix-mlp [...]
# Writes $RUN/NAME/ode-reward.tsv: round, seconds (cumulative wall-clock of the rounds, from
# rounds.tsv), reward_mean and reward_std (round 0 is the base). Rounds already in the file are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
BASE=${BASE:-$RUN/base.safetensors}
ENC_DISC=${ENC_DISC:-$RUN/enc-disc.safetensors}   # or "pixels"
DISC=${DISC:?set DISC to the discriminator checkpoint}
CURVE_N=${CURVE_N:-1000}
CURVE_STEPS=${CURVE_STEPS:-50}
CURVE_SEED=${CURVE_SEED:-4242}
[ $# -gt 0 ] || { echo "usage: reward-curve.sh RUN_NAME..." >&2; exit 2; }

# discrim computes the features from x through the encoder itself (as in drl.sh): no embed stage.
score=(discrim score --model "$DISC" --encoder "$ENC_DISC" --threads "$THREADS")
ode_reward() {  # $1 = checkpoint -> "mean<TAB>std"
  # shellcheck disable=SC2046
  sample --model "$1" $(sample_weights "$1") --n "$CURVE_N" --sampler euler --steps "$CURVE_STEPS" \
      --seed "$CURVE_SEED" --threads "$THREADS" --quiet \
    | "${score[@]}" | tensors stats --json --tensor reward | jq -r '[.mean, .std] | @tsv'
}

for name in "$@"; do
  exp=$RUN/$name
  [ -s "$exp/rounds.tsv" ] || { echo "reward-curve: $exp/rounds.tsv missing (not a drl.sh run?)" >&2; exit 1; }
  out=$exp/ode-reward.tsv
  [ -s "$out" ] || printf 'round\tseconds\treward_mean\treward_std\n' > "$out"
  if ! grep -q "^0	" "$out"; then printf '0\t0\t%s\n' "$(ode_reward "$BASE")" >> "$out"; fi
  awk 'NR > 1 { s += $2; print $1 "\t" s }' "$exp/rounds.tsv" | while read -r r secs; do
    grep -q "^$r	" "$out" && continue
    ck=$exp/rounds/$(printf %04d "$r").safetensors
    [ -s "$ck" ] || continue
    printf '%s\t%s\t%s\n' "$r" "$secs" "$(ode_reward "$ck")" >> "$out"
  done
  echo "reward-curve: $name: $(tail -n 1 "$out" | tr '\t' ' ') (round seconds mean std)" >&2
done
