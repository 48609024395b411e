#!/usr/bin/env bash
# The main job, end to end on Fashion-MNIST at small scale (about 15 minutes on 2 cores):
# data -> encoders and base model -> discriminator -> DRL rounds -> evaluation, ending with a
# before/after table, side-by-side sample grids and a plot of FD over rounds.
#   make demo            (or: RUN=runs/demo bash pipelines/demo.sh with the tools on PATH)
# Every knob of the stages can be overridden from the environment (see each script's head).
# Started again, it resumes: finished products are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUN=${RUN:-runs/demo}
export THREADS=${THREADS:-2}
# Small-scale settings (the full-scale ones in docs/results.md are the scripts' defaults).
# The discriminator: an MLP head on pixels, the configuration that moved the held-out FD most in
# docs/results.md (the paper's recipe, a linear head in a self-supervised space, is
# ENC_DISC_KIND=simclr ENC_DISC=$RUN/enc-disc.safetensors DISC_HEAD=linear).
export ENC_DISC_KIND=${ENC_DISC_KIND:-none} ENC_DISC=${ENC_DISC:-pixels} DISC_HEAD=${DISC_HEAD:-mlp}
export ENC_EVAL_STEPS=${ENC_EVAL_STEPS:-400}
export BASE_MODEL=${BASE_MODEL:-mlp-small} BASE_STEPS=${BASE_STEPS:-1500}
export DISC_FAKE=${DISC_FAKE:-5000} DISC_REAL=${DISC_REAL:-5000}
export NAME=${NAME:-drl} LAMBDA=${LAMBDA:-1} ROUNDS=${ROUNDS:-12} N=${N:-256} EVAL_EVERY=${EVAL_EVERY:-4}
export EVAL_N=${EVAL_N:-2000} EVAL_STEPS=${EVAL_STEPS:-50}
mkdir -p "$RUN"
start=$SECONDS
stamp() { echo "demo: $1 done at $(( SECONDS - start )) s" >&2; }

bash pipelines/prepare-data.sh >/dev/null; stamp "data"
bash pipelines/pretrain.sh; stamp "encoders and base model"
bash pipelines/drl.sh; stamp "discriminator and $ROUNDS DRL rounds"

results=$RUN/results.tsv
last=$(awk -F'\t' -v n="$NAME" '$1 == n { r = $2 } END { print r }' "$results")
{ tensors head -n 50 -i "$RUN/eval/base-r0.first100.tzst"
  tensors head -n 50 -i "$RUN/eval/$NAME-r$last.first100.tzst"; } \
  | tensors to-png --grid 10x10 -o "$RUN/base-vs-drl.png"
bash pipelines/plot-fd.sh "$results" "$RUN/fd-over-rounds.png" "$NAME"

echo
echo "Before (base model) and after $last DRL rounds; $EVAL_N samples, Euler-$EVAL_STEPS, against the 10,000 test images:"
echo
awk -F'\t' -v n="$NAME" -v r="$last" 'BEGIN { OFS = "\t" } NR == 1 || ($1 == "base" && $2 == 0) || ($1 == n && $2 == r) {
  printf "%-8s %6s %9s %10s %10s %10s %8s %8s %9s %11s %18s\n", $1, $2, $3, $15, $5, $7, $8, $9, $10, $11, $16 }' "$results"
awk -F'\t' -v n="$NAME" -v r="$last" '$1 == "base" && $2 == 0 { b = $3 } $1 == n && $2 == r { d = $3 }
  END { if (b > 0) printf "\nheld-out FD: base %.1f -> DRL %.1f (%+.1f%%)\n", b, d, 100 * (d - b) / b }' "$results"
echo
echo "fd_eval: FD in the held-out classifier space (the discriminator never saw it); fd_pixels: FD in"
echo "pixel space, the discriminator's; kid in x1000. Lower is better for FD and KID. class_consistency:"
echo "the fraction of samples the evaluation classifier assigns to the requested class."
echo "Grids: $RUN/base-vs-drl.png (top 5 rows base, bottom 5 rows DRL, same noise; column j = class j),"
echo "       $RUN/eval/*-grid.png;  plot: $RUN/fd-over-rounds.png;  table: $results"
echo "demo: finished in $(( SECONDS - start )) s"
