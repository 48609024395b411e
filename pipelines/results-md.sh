#!/usr/bin/env bash
# Print rows of a results table (evaluate.sh) as a Markdown table.
#   bash pipelines/results-md.sh RESULTS.tsv [LABEL[:ROUND] ...]     (no labels: every row)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: results-md.sh RESULTS.tsv [LABEL[:ROUND] ...]" >&2; exit 2; }
results=$1; shift
echo "| run | round | FD held-out | FD SimCLR | FD pixels | KID x1000 (s.e.) | precision | recall | density | coverage | brightness | contrast | class consistency |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
row() { printf '| %s | %s | %s | %s | %s | %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "${15:--}" "$5" "$6" "$7" "$8" "$9" "${10}" "${11}" "${12}" "${16:--}"; }
if [ $# -eq 0 ]; then
  tail -n +2 "$results" | while IFS=$'\t' read -r -a f; do row "${f[@]}"; done
else
  for sel in "$@"; do
    label=${sel%%:*} round=; [[ $sel == *:* ]] && round=${sel#*:}
    awk -F'\t' -v l="$label" -v r="$round" 'NR > 1 && $1 == l && (r == "" || $2 == r)' "$results" \
      | while IFS=$'\t' read -r -a f; do row "${f[@]}"; done
  done
fi
