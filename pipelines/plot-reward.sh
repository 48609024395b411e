#!/usr/bin/env bash
# Plot the common-scale reward (pipelines/reward-curve.sh) against the wall-clock of the rounds.
#   bash pipelines/plot-reward.sh OUT.png RUN/NAME [RUN/NAME...]
# Each argument is a drl.sh run folder holding ode-reward.tsv; its base name is the curve's title.
# TITLE overrides the plot title.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -ge 2 ] || { echo "usage: plot-reward.sh OUT.png RUN/NAME [RUN/NAME...]" >&2; exit 2; }
out=$1; shift
plots=()
for exp in "$@"; do
  [ -s "$exp/ode-reward.tsv" ] || { echo "plot-reward: $exp/ode-reward.tsv missing; run pipelines/reward-curve.sh first" >&2; exit 1; }
  plots+=("'< tail -n +2 $exp/ode-reward.tsv' using 2:3 with linespoints title '$(basename "$exp")'")
done
plot_png "$out" "${TITLE:-Discriminator logit of deterministic ODE samples (same noise) against RL wall-clock}" \
  'wall-clock of the RL rounds (s)' 'mean reward (logit) of the same-noise ODE samples' 'set key bottom right' "${plots[@]}"
