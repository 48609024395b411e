#!/usr/bin/env bash
# Evaluate one model (or a stream of samples) against the held-out test split and append a row to
# the results table.
#   RUN=runs/demo bash pipelines/evaluate.sh MODEL.safetensors LABEL [ROUND]
#   RUN=runs/demo bash pipelines/evaluate.sh samples.tzst LABEL         (any stream with x and y)
# Metrics: FD in the held-out encoder (enc-eval: DRL never trained against it), in the
# discriminator's encoder (enc-disc) and in pixel space (fd_pixels, last column), KID (x1000, with its standard error) and precision/recall/
# density/coverage in the held-out space, low-level image statistics (brightness, contrast,
# whiteness), class consistency (the fraction of samples that a classifier, by default the
# held-out encoder's own head, assigns to the label they were generated for; last column), and a
# 10x10 grid (column j: class j). The row goes to $RESULTS (TSV, header written once); the full fid
# reports to $RUN/eval/LABEL-rROUND.{eval,disc}.json.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUN=${RUN:-runs/demo}
THREADS=${THREADS:-2}
EVAL_N=${EVAL_N:-5000}                 # samples per evaluation (class-balanced)
EVAL_SAMPLER=${EVAL_SAMPLER:-euler}    # the deterministic ODE: what a user of the model draws
EVAL_STEPS=${EVAL_STEPS:-50}
EVAL_SEED=${EVAL_SEED:-12345}          # fixed: every model is judged on the same noise
EVAL_WEIGHTS=${EVAL_WEIGHTS:-auto}     # auto (EMA for train checkpoints, raw for rlstep ones) | ema | raw
EVAL_CFG=${EVAL_CFG:-1}                # classifier-free guidance scale (1: off, the toolkit's default; a
                                       # guided row is a reference point for guidance-free DRL, label it so)
RESULTS=${RESULTS:-$RUN/results.tsv}
KEEP_SAMPLES=${KEEP_SAMPLES:-0}        # 1: keep the generated stream in $RUN/eval
ENC_EVAL=${ENC_EVAL:-$RUN/enc-eval.safetensors}   # the held-out space (no discriminator ever trains in it)
ENC_CLASSIFY=${ENC_CLASSIFY:-$ENC_EVAL}           # the classifier for class consistency (needs a head)

[ $# -ge 2 ] || { echo "usage: evaluate.sh MODEL.safetensors|SAMPLES.tzst LABEL [ROUND]" >&2; exit 2; }
SRC=$1 LABEL=$2 ROUND=${3:-0}
[ -s "$SRC" ] || { echo "evaluate: $SRC is missing or empty" >&2; exit 1; }
OUT=$RUN/eval
mkdir -p "$OUT"
tag="$LABEL-r$ROUND"
rm -rf "$OUT/.tmp-$tag".*   # left by a killed evaluation of the same tag
tmp=$(mktemp -d "$OUT/.tmp-$tag.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS

# Reference features of the test split in both spaces (x passed through for image statistics).
# fid refuses features of two different encoders, so a stale cache is an error, not a wrong number.
test_eval=$RUN/test-eval.tzst
[ "$ENC_EVAL" = "$RUN/enc-eval.safetensors" ] || test_eval=$RUN/test-$(basename "$ENC_EVAL" .safetensors).tzst
[ -s "$ENC_EVAL" ] || { echo "evaluate: $ENC_EVAL is missing (pipelines/pretrain.sh trains it)" >&2; exit 1; }
[ -s "$test_eval" ] || embed --encoder "$ENC_EVAL" --threads "$THREADS" --quiet -i "$RUN/test.tzst" -o "$test_eval"
if [ ! -s "$RUN/test-disc.tzst" ] && [ -s "$RUN/enc-disc.safetensors" ]; then
  embed --encoder "$RUN/enc-disc.safetensors" --threads "$THREADS" --quiet -i "$RUN/test.tzst" -o "$RUN/test-disc.tzst"
fi

case "$SRC" in
  *.tzst) samples=$SRC ;;
  *)
    weights=()
    case "$EVAL_WEIGHTS" in
      raw) weights=(--no-ema) ;;
      auto) [ -n "$(ckpt_meta "$SRC" rl.algo)" ] && weights=(--no-ema) ;;
    esac
    samples=$tmp/samples.tzst
    sample --model "$SRC" "${weights[@]}" --n "$EVAL_N" --sampler "$EVAL_SAMPLER" --steps "$EVAL_STEPS" \
      --cfg "$EVAL_CFG" --seed "$EVAL_SEED" --threads "$THREADS" --quiet -o "$samples"
    ;;
esac
# The first 100 samples (ids 0-99: column j is class j) for grids and side-by-side comparisons:
# every model is sampled from the same noise, so the same cell compares like with like.
tensors head -n 100 -i "$samples" -o "$OUT/$tag.first100.tzst"
tensors to-png --grid 10x10 -i "$OUT/$tag.first100.tzst" -o "$OUT/$tag-grid.png"

embed --encoder "$ENC_EVAL" --threads "$THREADS" --quiet -i "$samples" -o "$tmp/gen-eval.tzst"
# Class consistency: does a classifier agree with the label each sample was generated for?
if embed classify --encoder "$ENC_CLASSIFY" --threads "$THREADS" --quiet -i "$samples" --report "$tmp/classify.json" > /dev/null 2> "$tmp/classify.err"; then :
else echo '{"accuracy": null}' > "$tmp/classify.json"; echo "evaluate: no class consistency: $(cat "$tmp/classify.err")" >&2; fi
# The SimCLR space (enc-disc) is optional: a run whose discriminator works on pixels may skip it.
have_disc=0; [ -s "$RUN/enc-disc.safetensors" ] && have_disc=1
[ $have_disc = 1 ] && embed --encoder "$RUN/enc-disc.safetensors" --threads "$THREADS" --quiet -i "$samples" -o "$tmp/gen-disc.tzst"
fid --json --kid --prdc --threads "$THREADS" "$test_eval" "$tmp/gen-eval.tzst" > "$tmp/eval.json"
if [ $have_disc = 1 ]; then fid --json --threads "$THREADS" "$RUN/test-disc.tzst" "$tmp/gen-disc.tzst" > "$tmp/disc.json"
else echo '{"fd": null}' > "$tmp/disc.json"; fi
# Pixel space too: the space of a pixel discriminator (ENC_DISC=pixels in drl.sh).
[ -s "$RUN/test-pixels.stats" ] || embed --pixels --threads "$THREADS" --quiet -i "$RUN/test.tzst" | fid stats -o "$RUN/test-pixels.stats" --threads "$THREADS"
embed --pixels --threads "$THREADS" --quiet -i "$samples" -o "$tmp/gen-pixels.tzst"
fid --json --threads "$THREADS" "$RUN/test-pixels.stats" "$tmp/gen-pixels.tzst" > "$tmp/pixels.json"
mv "$tmp/eval.json" "$OUT/$tag.eval.json"
mv "$tmp/disc.json" "$OUT/$tag.disc.json"
mv "$tmp/pixels.json" "$OUT/$tag.pixels.json"
mv "$tmp/classify.json" "$OUT/$tag.classify.json"
[ "$KEEP_SAMPLES" = 1 ] && [ "$samples" = "$tmp/samples.tzst" ] && mv "$samples" "$OUT/$tag.tzst"

header="label	round	fd_eval	fd_simclr	kid_x1000	kid_se_x1000	precision	recall	density	coverage	brightness	contrast	whiteness	eval_seconds	fd_pixels	class_consistency"
[ -s "$RESULTS" ] || echo "$header" > "$RESULTS"
# A table begun before the class_consistency column gets its name in the header.
head -n 1 "$RESULTS" | grep -q class_consistency || sed -i '1s/$/\tclass_consistency/' "$RESULTS"
row=$(jq -r --arg lab "$LABEL" --arg round "$ROUND" --argjson secs $(( SECONDS - t0 )) \
  --slurpfile disc "$OUT/$tag.disc.json" --slurpfile pix "$OUT/$tag.pixels.json" \
  --slurpfile cls "$OUT/$tag.classify.json" '
  def f(d): if . == null then "-" else (. * pow(10; d) | round) / pow(10; d) end;
  [$lab, $round, (.fd | f(3)), ($disc[0].fd | f(3)), (.kid.mean * 1000 | f(3)), (.kid.se * 1000 | f(3)),
   (.prdc.precision | f(4)), (.prdc.recall | f(4)), (.prdc.density | f(4)), (.prdc.coverage | f(4)),
   (.b.lowlevel.brightness | f(4)), (.b.lowlevel.contrast | f(4)), (.b.lowlevel.whiteness | f(4)), $secs, ($pix[0].fd | f(3)), ($cls[0].accuracy | f(4))]
  | map(tostring) | join("\t")' "$OUT/$tag.eval.json")
echo "$row" >> "$RESULTS"
echo "$row"
