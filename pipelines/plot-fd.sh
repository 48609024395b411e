#!/usr/bin/env bash
# Plot held-out FD (and FD in the discriminator's space) over RL rounds from a results table.
#   bash pipelines/plot-fd.sh RESULTS.tsv OUT.png NAME [NAME...]
# Each NAME is a label in the table's first column; the base model's row (label "base", round 0)
# starts every curve. SECOND=pixels (default) or simclr picks the second space drawn (right axis).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -ge 3 ] || { echo "usage: plot-fd.sh RESULTS.tsv OUT.png NAME [NAME...]" >&2; exit 2; }
results=$1 out=$2; shift 2
SECOND=${SECOND:-pixels}
col=15; [ "$SECOND" = simclr ] && col=4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plots=()
for name in "$@"; do
  { awk -F'\t' -v c="$col" '$1 == "base" && $2 == 0 { print $2, $3, $c; exit }' "$results"
    awk -F'\t' -v n="$name" -v c="$col" '$1 == n { print $2, $3, $c }' "$results" | sort -n -k1,1; } > "$tmp/$name.dat"
  plots+=("'$tmp/$name.dat' using 1:2 with linespoints title '$name: held-out FD (enc-eval)'")
  plots+=("'$tmp/$name.dat' using 1:3 axes x1y2 with linespoints dashtype 2 title '$name: FD in $SECOND space (right axis)'")
done
plot_png "$out" 'DRL on Fashion-MNIST: Frechet distance over RL rounds (round 0 = base model)' \
  'RL round' 'FD, held-out classifier space' \
  "set y2label 'FD, $SECOND space'
set ytics nomirror
set y2tics
set key outside bottom center horizontal" "${plots[@]}"
