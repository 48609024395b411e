#!/usr/bin/env bash
# The fair baseline: the base model trained on with plain flow matching (train --resume: same data
# order, optimizer state and EMA) for the wall-clock a DRL run took, evaluated after each chunk.
# DRL only counts as a win if it beats this.
#   RUN=runs/demo FROM=drl-am bash pipelines/fm-baseline.sh    (budget = that run's stage 1 + rounds)
#   RUN=runs/demo BUDGET_SECONDS=600 bash pipelines/fm-baseline.sh
# Writes $RUN/$NAME/cur.safetensors, chunks.tsv (chunk, steps, seconds so far) and rows
# "$NAME <chunk>" of $RUN/results.tsv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
BASE=${BASE:-$RUN/base.safetensors}
NAME=${NAME:-fm-baseline}
FROM=${FROM:-}                        # a drl.sh run name whose wall-clock sets the budget
DISC=${DISC:-$RUN/disc-linear-r1_0.safetensors}
CHUNKS=${CHUNKS:-4}                   # evaluations along the way
export RUN THREADS
EXP=$RUN/$NAME
mkdir -p "$EXP"
if [ -z "${BUDGET_SECONDS:-}" ]; then
  [ -n "$FROM" ] && [ -s "$RUN/$FROM/rounds.tsv" ] || { echo "fm-baseline: give BUDGET_SECONDS or FROM=<a finished drl.sh run>" >&2; exit 2; }
  stage1=$(cat "$DISC.seconds" 2>/dev/null || echo 0)
  BUDGET_SECONDS=$(awk -v s1="$stage1" 'NR > 1 { s += $2 } END { print s + s1 }' "$RUN/$FROM/rounds.tsv")
fi
# Steps per chunk from the base run's measured speed (images/s of its last logged steps).
batch=$(ckpt_meta "$BASE" train.settings | jq -r '.batch // 128')
ips=$(tail -n 5 "$RUN/base-metrics.jsonl" | jq -s 'map(.images_per_s) | add / length')
steps_total=$(jq -n --argjson b "$BUDGET_SECONDS" --argjson ips "$ips" --argjson batch "$batch" '($b * $ips / $batch) | floor')
chunk=$(( (steps_total + CHUNKS - 1) / CHUNKS ))
[ -s "$EXP/cur.safetensors" ] || cp "$BASE" "$EXP/cur.safetensors"
base_step=$(ckpt_meta "$BASE" step)
echo "fm-baseline: budget $BUDGET_SECONDS s ~ $steps_total steps of $batch at $ips images/s, in $CHUNKS chunks" >&2
[ -s "$EXP/chunks.tsv" ] || printf 'chunk\tsteps\tseconds\n' > "$EXP/chunks.tsv"
for c in $(seq 1 "$CHUNKS"); do
  grep -q "^$c	" "$EXP/chunks.tsv" && continue
  prev_secs=$(awk 'NR > 1 { s = $3 } END { print s + 0 }' "$EXP/chunks.tsv")
  target=$(( base_step + c * chunk ))
  t0=$SECONDS
  train --resume "$EXP/cur.safetensors" --steps "$target" -i "$RUN/train.tzst" --threads "$THREADS" \
    --metrics "$EXP/metrics.jsonl" --log-every 50 --quiet -o "$EXP/cur.safetensors"
  secs=$(( prev_secs + SECONDS - t0 ))
  printf '%s\t%s\t%s\n' "$c" "$(( c * chunk ))" "$secs" >> "$EXP/chunks.tsv"
  bash "$here/evaluate.sh" "$EXP/cur.safetensors" "$NAME" "$c" >/dev/null
  echo "fm-baseline: chunk $c: +$(( c * chunk )) steps, ${secs}s: $(grep "^$NAME	$c	" "${RESULTS:-$RUN/results.tsv}" | cut -f3-4 | tr '\t' ' ') (fd_eval fd_simclr)" >&2
done
