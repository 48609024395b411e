#!/usr/bin/env bash
# The main job, end to end on Fashion-MNIST. For now: the data as streams and a grid of the
# first 64 training images; the DRL stages join as their tools land.
#   make demo            (or: RUN=runs/demo bash pipelines/demo.sh with the tools on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
start=$(date +%s)
bash pipelines/prepare-data.sh
tensors head -n 64 -i "$RUN/train.tzst" | tensors to-png --grid 8x8 -o "$RUN/train-grid.png"
echo "demo: wrote $RUN/train.tzst, $RUN/test.tzst and $RUN/train-grid.png in $(( $(date +%s) - start )) s"
