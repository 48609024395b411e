#!/usr/bin/env bash
# The DRL-then-preference Pareto study (DRL section 5.3 in miniature): a hackable preference
# reward against the strong held-out FD, along preference-RL runs (drl.sh with REWARD=confidence
# or brightness) that start from different models, e.g. the base and a DRL checkpoint.
#   RUN=runs/sit PREF=confidence REWARD_CLASSIFIER=runs/sit/enc-pref.safetensors \
#     bash pipelines/pareto.sh OUT.png NAME=START.safetensors [NAME=START.safetensors ...]
# NAME is a drl.sh run in $RUN (its rounds/NNNN.safetensors), START the checkpoint it started
# from (its round 0). For round 0 and every PARETO_EVERY-th round it draws EVAL_N samples with
# evaluate.sh (the same noise for every checkpoint; the row lands in $RESULTS), scores the
# preference on those same samples, and appends to $RUN/pareto.tsv: name, round, preference, the
# held-out FD, precision, class consistency and the low-level statistics (brightness, contrast,
# whiteness) that show reward hacking. Then one gnuplot PNG: held-out FD against preference, a
# curve per start. Rows already in pareto.tsv are kept, so a stopped study resumes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
PREF=${PREF:-confidence}              # confidence (REWARD_CLASSIFIER's probability of y) | brightness
REWARD_CLASSIFIER=${REWARD_CLASSIFIER:-}
PARETO_EVERY=${PARETO_EVERY:-2}
RESULTS=${RESULTS:-$RUN/results.tsv}
export RUN THREADS RESULTS
[ $# -ge 2 ] || { echo "usage: pareto.sh OUT.png NAME=START.safetensors [NAME=START.safetensors ...]" >&2; exit 2; }
out=$1; shift
case "$PREF" in
  confidence) [ -s "$REWARD_CLASSIFIER" ] || { echo "pareto: PREF=confidence needs REWARD_CLASSIFIER=<a classifier checkpoint>" >&2; exit 2; } ;;
  brightness) ;;
  *) echo "pareto: PREF must be confidence or brightness, not $PREF" >&2; exit 2 ;;
esac
table=$RUN/pareto.tsv
[ -s "$table" ] || printf 'name\tround\tpreference\tfd_eval\tprecision\tclass_consistency\tbrightness\tcontrast\twhiteness\n' > "$table"
preference() {  # mean preference reward of a sample stream
  if [ "$PREF" = confidence ]; then
    embed classify --encoder "$REWARD_CLASSIFIER" --threads "$THREADS" --quiet -i "$1" | tensors reward --class-confidence
  else
    tensors reward --brightness -i "$1"
  fi | tensors stats --json --tensor reward | jq -r .mean
}
point() {  # NAME ROUND CHECKPOINT
  local name=$1 round=$2 ck=$3 tag="$1-r$2"
  grep -q "^$name	$round	" "$table" && return 0
  rm -f "$RUN/eval/$tag.tzst"
  sed -i "/^$name	$round	/d" "$RESULTS" 2>/dev/null || true   # evaluate again, keeping the samples
  KEEP_SAMPLES=1 bash "$here/evaluate.sh" "$ck" "$name" "$round" >/dev/null
  local p; p=$(preference "$RUN/eval/$tag.tzst")
  rm -f "$RUN/eval/$tag.tzst"
  # results.tsv: 3 fd_eval, 7 precision, 11 brightness, 12 contrast, 13 whiteness, 16 class_consistency
  awk -F'\t' -v n="$name" -v r="$round" -v p="$p" '$1 == n && $2 == r { print n "\t" r "\t" p "\t" $3 "\t" $7 "\t" $16 "\t" $11 "\t" $12 "\t" $13; exit }' \
    "$RESULTS" >> "$table"
  echo "pareto: $(tail -n 1 "$table")" >&2
}
plots=()
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for pair in "$@"; do
  name=${pair%%=*} start=${pair#*=}
  [ "$name" != "$pair" ] && [ -s "$start" ] || { echo "pareto: give NAME=START.safetensors (the start checkpoint must exist): $pair" >&2; exit 2; }
  [ -d "$RUN/$name/rounds" ] || { echo "pareto: $RUN/$name/rounds is missing (run drl.sh with NAME=$name first)" >&2; exit 1; }
  point "$name" 0 "$start"
  for ck in "$RUN/$name"/rounds/*.safetensors; do
    [ -e "$ck" ] || continue
    r=$((10#$(basename "$ck" .safetensors)))
    [ $(( r % PARETO_EVERY )) = 0 ] && point "$name" "$r" "$ck"
  done
  awk -F'\t' -v n="$name" 'NR > 1 && $1 == n { print $2, $3, $4 }' "$table" | sort -n -k1,1 > "$tmp/$name.dat"
  plots+=("'$tmp/$name.dat' using 2:3 with linespoints title '$name'")
done
plot_png "$out" "Preference ($PREF) against held-out FD (a point per checkpoint; first: the start)" \
  "preference reward ($PREF), mean over the evaluation samples" 'FD, held-out classifier space' \
  "set key outside bottom center horizontal" "${plots[@]}"
echo "pareto: $out" >&2
