#!/usr/bin/env bash
# Engine speed benchmark: train and sample (Swift) against PyTorch CPU on the same checkpoints,
# batch 256, 2 threads, plus the PyTorch parity check. Not part of the test run.
#
#   benchmarks/bench_engine.sh [MLP_CKPT] [SIT_CKPT]
#
# Defaults: /work/runs/base-mlp.safetensors and /work/runs/base-sit.safetensors (docs/engine.md
# says how they were trained). Needs: python3 with torch, safetensors, zstandard, numpy; cc and
# libopenblas-dev (for the sgemm peak); the Fashion-MNIST package for training data.
set -euo pipefail
cd "$(dirname "$0")/.."
MLP=${1:-/work/runs/base-mlp.safetensors}
SIT=${2:-/work/runs/base-sit.safetensors}
THREADS=${THREADS:-2}
swift build -c release >/dev/null
BIN=.build/release
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=/usr/share/datasets/fashion-mnist
"$BIN/tensors" from-idx "$D/train-images-idx3-ubyte.gz" "$D/train-labels-idx1-ubyte.gz" | "$BIN/tensors" head -n 4096 > "$TMP/data.tzst"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 benchmarks/bench_engine.py --bin "$BIN" --data "$TMP/data.tzst" --threads "$THREADS" \
    --checkpoint "mlp=$MLP" --checkpoint "sit-tiny=$SIT" --json "${JSON_OUT:-$TMP/bench.json}"
