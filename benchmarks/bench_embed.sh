#!/bin/sh
# embed images/s vs PyTorch CPU on the same checkpoints (see bench_embed.py for the method).
# Usage: benchmarks/bench_embed.sh [threads...]   (default: 1 2)
# Needs: swift build -c release; /work/runs/test.tzst (tensors from-idx ... t10k ...);
#        /work/runs/enc-classifier.safetensors, /work/runs/enc-simclr.safetensors (embed train);
#        python3 with torch, numpy, safetensors, zstandard.
set -e
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs}
THREADS=${*:-1 2}
for t in $THREADS; do
  for kind in classifier simclr; do
    python3 benchmarks/bench_embed.py --embed .build/release/embed --encoder "$RUNS/enc-$kind.safetensors" \
      --data "$RUNS/test.tzst" --threads "$t"
  done
done
