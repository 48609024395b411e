# Helpers sourced by the pipeline scripts.

# ckpt_meta FILE KEY: a metadata value of a safetensors checkpoint (empty when absent).
ckpt_meta() {
  tensors info --meta "$2" "$1"
}

# sample_weights FILE: the flag that makes `sample` draw the weights RL trains: the raw weights of
# an rlstep checkpoint (on-policy rollouts); a train checkpoint's EMA (the default) otherwise.
sample_weights() {
  if [ -n "$(ckpt_meta "$1" rl.algo)" ]; then echo --no-ema; fi
}

# default_disc RUN HEAD R1 R1_EVERY: drl.sh stage 1's discriminator file for these settings, shared
# by every run on the same base with them (refine-cron.sh finds it by the same name).
default_disc() {
  echo "$1/disc-$2-r1_$3$([ "$4" = 1 ] || echo "-every$4").safetensors"
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
