#!/usr/bin/env bash
# One `rlstep --algo am` round profiled stage by stage against a PyTorch twin of the same
# adjoint-matching step (benchmarks/bench_am.py), with a parity check. Not part of the test run.
#
#   benchmarks/bench_am.sh                 (MODELS="mlp-small sit-tiny" N=256 STEPS=20 THREADS=2)
#
# For each model it trains a 20-step checkpoint on 4,096 Fashion-MNIST images (the cost depends
# on the shapes, not on how well the weights are trained), draws N memoryless rollouts of STEPS
# steps in records of 64 with `sample --record`, and takes the mean brightness as the reward
# (`tensors reward --brightness --grad`: the round's cost does not depend on where reward.grad
# comes from). Needs python3 with torch, safetensors, zstandard, numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
N=${N:-256}
STEPS=${STEPS:-20}
if [ -z "${BIN:-}" ]; then swift build -c release >/dev/null; BIN=.build/release; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=/usr/share/datasets/fashion-mnist
"$BIN/tensors" from-idx "$D/train-images-idx3-ubyte.gz" "$D/train-labels-idx1-ubyte.gz" | "$BIN/tensors" head -n 4096 > "$TMP/data.tzst"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for m in ${MODELS:-mlp-small sit-tiny}; do
  "$BIN/train" --model "$m" --steps 20 --batch 64 --warmup 5 --seed 0 --threads "$THREADS" \
    -o "$TMP/$m.safetensors" -i "$TMP/data.tzst" 2>/dev/null
  "$BIN/sample" --model "$TMP/$m.safetensors" --n "$N" --batch 64 --seed 1 --sampler memoryless-ll --steps "$STEPS" \
    --record --threads "$THREADS" --quiet | "$BIN/tensors" reward --brightness --grad > "$TMP/$m-am.tzst"
  echo "== $m"
  python3 benchmarks/bench_am.py --bin "$BIN" --model "$TMP/$m.safetensors" --buffer "$TMP/$m-am.tzst" \
    --threads "$THREADS" ${JSON_DIR:+--json "$JSON_DIR/am-$m.json"}
done
