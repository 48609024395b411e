# Helpers sourced by the pipeline scripts.

# ckpt_meta FILE KEY: a metadata value of a safetensors checkpoint (empty when absent). The header
# is 8 bytes of little-endian length, then that much JSON.
ckpt_meta() {
  local n; n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  head -c $(( n + 8 )) "$1" | tail -c +9 | jq -r --arg k "$2" '.__metadata__[$k] // empty'
}

# sample_weights FILE: the flag that makes `sample` draw the weights RL trains: the raw weights of
# an rlstep checkpoint (on-policy rollouts); a train checkpoint's EMA (the default) otherwise.
sample_weights() {
  if [ -n "$(ckpt_meta "$1" rl.algo)" ]; then echo --no-ema; fi
}

# plot_png OUT TITLE XLABEL YLABEL SETTINGS PLOT...: one gnuplot PNG of the given plot clauses;
# SETTINGS holds any further gnuplot lines (keys, second axis).
plot_png() {
  local out=$1 title=$2 xlabel=$3 ylabel=$4 settings=$5; shift 5
  local joined; joined=$(printf '%s, ' "$@")
  gnuplot <<EOG
set terminal pngcairo size 900,520 noenhanced
set output '$out'
set title '$title'
set xlabel '$xlabel'
set ylabel '$ylabel'
set grid
$settings
plot ${joined%, }
EOG
}
