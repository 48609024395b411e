#!/usr/bin/env bash
# Plot training loss curves from `train --metrics` JSON lines (gnuplot to PNG).
#   bash pipelines/plot-loss.sh OUT.png LABEL=metrics.jsonl [LABEL=metrics.jsonl ...]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -ge 2 ] || { echo "usage: plot-loss.sh OUT.png LABEL=metrics.jsonl ..." >&2; exit 2; }
out=$1; shift
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plots=()
i=0
for spec in "$@"; do
  label=${spec%%=*} file=${spec#*=}
  i=$((i + 1))
  jq -r '[.step, .loss] | @tsv' "$file" > "$tmp/$i.dat"
  plots+=("'$tmp/$i.dat' using 1:2 with lines title '$label'")
done
plot_png "$out" 'Conditional flow matching on Fashion-MNIST: training loss (minibatch of 128, logged every 50 steps)' \
  'optimizer step' 'velocity MSE' 'set key top right' "${plots[@]}"
