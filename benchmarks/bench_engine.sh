#!/usr/bin/env bash
# Engine speed benchmark: train and sample (Swift) against PyTorch CPU on the same checkpoints,
# batch 256, 2 threads, plus the PyTorch parity check. Not part of the test run.
#
#   benchmarks/bench_engine.sh [MLP_CKPT [SIT_TINY_CKPT [SIT_SMALL_CKPT]]]
#
# Without checkpoints it makes its own on a fresh machine: mlp-small, sit-tiny and sit-small
# trained for 20 steps on 4,096 images (speed and parity depend on the shapes, not on how well the
# weights are trained). MODELS="mlp-small sit-tiny" picks a subset of the self-made ones.
# Needs: python3 with torch, safetensors, zstandard, numpy; cc and libopenblas-dev (for the
# sgemm peak); the Fashion-MNIST package for training data.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
# BIN=DIR measures other builds of the tools (e.g. an older commit's) with this script.
if [ -z "${BIN:-}" ]; then swift build -c release >/dev/null; BIN=.build/release; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=/usr/share/datasets/fashion-mnist
"$BIN/tensors" from-idx "$D/train-images-idx3-ubyte.gz" "$D/train-labels-idx1-ubyte.gz" | "$BIN/tensors" head -n 4096 > "$TMP/data.tzst"
CKPTS=()
if [ $# -gt 0 ]; then
  names=(mlp-small sit-tiny sit-small)
  i=0
  for c in "$@"; do CKPTS+=(--checkpoint "${names[$i]}=$c"); i=$((i + 1)); done
else
  for m in ${MODELS:-mlp-small sit-tiny sit-small}; do
    "$BIN/train" --model "$m" --steps 20 --batch 64 --warmup 5 --seed 0 --threads "$THREADS" \
      -o "$TMP/$m.safetensors" -i "$TMP/data.tzst" 2>/dev/null
    CKPTS+=(--checkpoint "$m=$TMP/$m.safetensors")
  done
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 benchmarks/bench_engine.py --bin "$BIN" --data "$TMP/data.tzst" --threads "$THREADS" \
    "${CKPTS[@]}" --json "${JSON_OUT:-$TMP/bench.json}"
