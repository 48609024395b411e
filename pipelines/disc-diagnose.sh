#!/usr/bin/env bash
# How good is a discriminator as DRL's reward, judged on samples it never saw: held-out real images
# (the test split) against fresh samples of the model it was trained against (other noise than
# its training fakes). Appends one row to $RUN/disc-diagnosis.tsv and keeps the JSON of
# `discrim eval` (AUC, calibration, log E_fake[exp r] and log E_real[exp -r], 0 for an exact ratio).
#   RUN=runs/sit bash pipelines/disc-diagnose.sh DISC.safetensors LABEL [MODEL.safetensors]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
ENC_DISC=${ENC_DISC:-$RUN/enc-disc.safetensors}   # or "pixels"
DIAG_N=${DIAG_N:-2000}                 # samples per side
DIAG_SAMPLER=${DIAG_SAMPLER:-euler}
DIAG_STEPS=${DIAG_STEPS:-50}
DIAG_SEED=${DIAG_SEED:-4242}           # not the seed of drl.sh's stage-1 fakes
[ $# -ge 2 ] || { echo "usage: disc-diagnose.sh DISC.safetensors LABEL [MODEL.safetensors]" >&2; exit 2; }
DISC=$1 LABEL=$2 MODEL=${3:-$RUN/base.safetensors}
for f in "$DISC" "$MODEL" "$RUN/test.tzst"; do [ -s "$f" ] || { echo "disc-diagnose: $f is missing" >&2; exit 1; }; done
enc=(); [ "$ENC_DISC" = pixels ] || enc=(--encoder "$ENC_DISC")
out=$RUN/diagnosis
mkdir -p "$out"
tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fakes=$out/$(basename "$MODEL" .safetensors)-fakes-s$DIAG_SEED-n$DIAG_N.tzst
[ -s "$fakes" ] || sample --model "$MODEL" $(sample_weights "$MODEL") --n "$DIAG_N" --sampler "$DIAG_SAMPLER" --steps "$DIAG_STEPS" \
  --seed "$DIAG_SEED" --threads "$THREADS" --quiet -o "$fakes"
tensors head -n "$DIAG_N" -i "$RUN/test.tzst" | discrim score --model "$DISC" "${enc[@]}" --threads "$THREADS" > "$tmp/real.tzst"
discrim score --model "$DISC" "${enc[@]}" --threads "$THREADS" -i "$fakes" > "$tmp/fake.tzst"
discrim eval --real "$tmp/real.tzst" --fake "$tmp/fake.tzst" > "$out/$LABEL.json"
table=$RUN/disc-diagnosis.tsv
[ -s "$table" ] || printf 'label\tauc\taccuracy\tbrier\tece\tmean_logit_real\tmean_logit_fake\tstd_logit_fake\tlog_mean_exp_fake\tlog_mean_exp_neg_real\n' > "$table"
jq -r --arg l "$LABEL" '[$l, .auc, .accuracy, .brier, .ece, .mean_logit_real, .mean_logit_fake, .std_logit_fake, .log_mean_exp_fake, .log_mean_exp_neg_real] | map(tostring) | join("\t")' "$out/$LABEL.json" | tee -a "$table"
