#!/usr/bin/env bash
# Swap a stage: the DRL pipeline with a Python feature stage (examples/pca_embed.py: PCA of the
# pixels, numpy + safetensors + zstandard) in place of `embed`. The stream contract is all it needs:
#   sample --record --group G | python3 examples/pca_embed.py --encoder pca.safetensors
#     | discrim score | rlstep --algo grpo
# The discriminator is trained on the Python stage's features (stage 1 uses it too); the reward
# has no image gradient through a Python stage, so the objective is GRPO, not adjoint matching.
# Evaluation stays in the Swift held-out space, so the result compares with drl.sh's.
#   RUN=runs/demo bash pipelines/drl-python-embed.sh     (after prepare-data.sh and pretrain.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUN=${RUN:-runs/demo}
PCA_DIM=${PCA_DIM:-64}
PYTHON=${PYTHON:-python3}
PCA=$RUN/pca$PCA_DIM.safetensors
"$PYTHON" -c 'import numpy, safetensors, zstandard' 2>/dev/null \
  || { echo "drl-python-embed: needs numpy, safetensors and zstandard (pip install numpy safetensors zstandard)" >&2; exit 1; }
if [ ! -s "$PCA" ]; then
  tensors head -n 20000 -i "$RUN/train.tzst" | "$PYTHON" "$here/../examples/pca_embed.py" fit --dim "$PCA_DIM" -o "$PCA.tmp"
  mv "$PCA.tmp" "$PCA"
fi
export RUN
export EMBED="$PYTHON $here/../examples/pca_embed.py --encoder $PCA"
export ALGO=${ALGO:-grpo} NAME=${NAME:-grpo-pca$PCA_DIM} DISC=${DISC:-$RUN/disc-pca$PCA_DIM.safetensors}
exec bash "$here/drl.sh"
