#!/usr/bin/env bash
# Fashion-MNIST (Debian's dataset-fashion-mnist) to train/test tensor streams.
#   RUN=runs/demo pipelines/prepare-data.sh
set -euo pipefail
RUN=${RUN:-runs/demo}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$RUN"
for split in train t10k; do
  out="$RUN/$split.tzst"
  [ "$split" = t10k ] && out="$RUN/test.tzst"
  if [ ! -s "$out" ]; then
    tensors from-idx "$DATA/$split-images-idx3-ubyte.gz" "$DATA/$split-labels-idx1-ubyte.gz" -o "$out"
  fi
done
tensors info --summary "$RUN/train.tzst"
tensors info --summary "$RUN/test.tzst"
