#!/bin/sh
# Linear-probe accuracies of the trained encoders and of pixels on Fashion-MNIST (docs/encoders.md).
# Usage: scripts/encoder_probes.sh [RUNS]   (default /work/runs; needs train.tzst, test.tzst,
#        enc-classifier.safetensors, enc-simclr.safetensors there, and `swift build -c release`)
set -e
cd "$(dirname "$0")/.."
RUNS=${1:-/work/runs}
EMBED=${EMBED:-.build/release/embed}
T=${THREADS:-2}
for enc in pixels classifier simclr; do
  if [ "$enc" = pixels ]; then how="--pixels"; else how="--encoder $RUNS/enc-$enc.safetensors"; fi
  $EMBED $how --threads "$T" --quiet -i "$RUNS/train.tzst" -o "$RUNS/train-feat-$enc.tzst"
  $EMBED $how --threads "$T" --quiet -i "$RUNS/test.tzst" -o "$RUNS/test-feat-$enc.tzst"
  printf '%s: ' "$enc"
  $EMBED probe --threads "$T" --json --train "$RUNS/train-feat-$enc.tzst" --test "$RUNS/test-feat-$enc.tzst"
done
