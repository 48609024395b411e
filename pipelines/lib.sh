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
