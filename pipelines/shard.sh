#!/usr/bin/env bash
# Sharded stages on engines you already have: `sample [| embed] [| discrim score]` as SHARDS shards
# under GNU parallel (this machine, or others with SSHLOGIN) or as a Slurm job array, joined with
# `cat` in shard order into OUT. Records cut at multiples of BATCH and every stage writes a zstd
# frame per record, so the joined stream is byte for byte the stream of one run (see "Exactness").
#   OUT=scored.tzst MODEL=cur.safetensors N=1024 SHARDS=4 SAMPLE_FLAGS="--sampler memoryless-ll --steps 20 --record --no-ema" \
#     DISC=disc.safetensors SCORE_FLAGS="--grad --encoder enc.safetensors" bash pipelines/shard.sh
#   ... ENGINE=parallel SSHLOGIN=2/node1,2/node2 bash pipelines/shard.sh    (shared filesystem, tools on PATH)
#   ... ENGINE=slurm SBATCH_FLAGS="--partition=cpu --cpus-per-task=2" bash pipelines/shard.sh
#   OUT=test-feat.tzst INPUT=test.tzst ENCODER=enc.safetensors SHARDS=4 bash pipelines/shard.sh
# Subcommands: `run` (the default: every shard on ENGINE, then `join`), `one [I]` (shard I, or
# $SLURM_ARRAY_TASK_ID; what the engines call), `join` (cat the shards into OUT), `plan` (print
# "I OFFSET COUNT" per shard).
#
# Exactness. Shard I covers samples [I*PER, min((I+1)*PER, N)) where PER is N/SHARDS rounded up to
# a multiple of BATCH (ALIGN=1, the default), so every shard starts on a record boundary:
# - MODEL (sample): `sample --offset` cuts records at multiples of --batch counted from id 0 and the
#   noise of a sample depends only on (seed, id), so the joined stream equals the bytes of
#   `sample -n N --batch BATCH` followed by the same stages.
# - INPUT (an existing stream, split with `tensors head --skip --n`): bytes equal one run over INPUT
#   when every record of INPUT but the last holds exactly BATCH samples (streams from `sample
#   --batch BATCH` or `tensors from-idx --batch BATCH`). Records of other sizes are split at shard
#   edges: the same samples, cut into records differently, and so other bytes.
# - ALIGN=0 (PER = N/SHARDS rounded up, not to BATCH): offsets off record boundaries give the same
#   samples to float rounding (BLAS may round a shorter batch differently), in other records.
# Shards share nothing while they run; a shard's file appears only when its pipeline succeeded, and
# a finished shard is kept, so a killed or failed run resumes with the shards that are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:?set OUT, the joined stream}
WORK=${WORK:-$OUT.shards}              # shard files NNNN.tzst and engine logs
SHARDS=${SHARDS:-2}
ENGINE=${ENGINE:-parallel}             # parallel (GNU parallel) | slurm (sbatch --array) | serial
MODEL=${MODEL:-}                       # sample from this checkpoint ...
INPUT=${INPUT:-}                       # ... or shard this stream instead
N=${N:-}                               # samples (MODEL: required; INPUT: default all of it)
BATCH=${BATCH:-256}                    # sample --batch; with INPUT, its samples per record
ALIGN=${ALIGN:-1}                      # 1: shard sizes are multiples of BATCH (byte-identical join)
SEED=${SEED:-0}
SAMPLE_FLAGS=${SAMPLE_FLAGS:-}         # e.g. "--sampler memoryless-ll --steps 20 --record --no-ema"
ENCODER=${ENCODER:-}                   # embed stage: an encoder checkpoint, "pixels", or empty (none)
EMBED_FLAGS=${EMBED_FLAGS:-}
DISC=${DISC:-}                         # discrim score stage: a discriminator, or empty (none)
SCORE_FLAGS=${SCORE_FLAGS:-}           # e.g. "--grad --encoder enc.safetensors"
THREADS=${THREADS:-1}                  # --threads of every stage of a shard
JOBS=${JOBS:-}                         # parallel --jobs (default: parallel's own, one per core)
SSHLOGIN=${SSHLOGIN:-}                 # parallel --sshlogin, e.g. "2/node1,2/node2" or ":" (local)
PARALLEL_FLAGS=${PARALLEL_FLAGS:-}     # anything else for parallel
SBATCH_FLAGS=${SBATCH_FLAGS:-}         # anything else for sbatch (partition, time, cpus)
SLURM_WAIT=${SLURM_WAIT:-1}            # 1: sbatch --wait, then join here; 0: a join job after the array (afterok)
SETTINGS="OUT WORK SHARDS MODEL INPUT N BATCH ALIGN SEED SAMPLE_FLAGS ENCODER EMBED_FLAGS DISC SCORE_FLAGS THREADS"
export $SETTINGS

log() { echo "shard: $*" >&2; }
die() { echo "shard: error: $*" >&2; exit 1; }

[ -n "$MODEL" ] || [ -n "$INPUT" ] || die "set MODEL (sample) or INPUT (a stream to shard)"
[ -z "$MODEL" ] || [ -z "$INPUT" ] || die "set only one of MODEL and INPUT"
[[ "$SHARDS" =~ ^[1-9][0-9]*$ ]] || die "SHARDS must be a positive integer, not '$SHARDS'"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "BATCH must be a positive integer, not '$BATCH'"

# total: N, or for INPUT without N the samples in it (from the summary of `tensors info --json`).
total() {
  if [ -n "$N" ]; then echo "$N"; return; fi
  [ -n "$MODEL" ] && die "set N, the number of samples"
  tensors info --json --summary "$INPUT" | tail -n 1 | sed -n 's/.*"samples": *\([0-9]*\).*/\1/p'
}

# plan: one line "I OFFSET COUNT" per shard (COUNT 0 for shards past the end).
plan() {
  local n per i off cnt
  n=$(total); [[ "$n" =~ ^[0-9]+$ ]] || die "cannot tell how many samples (set N)"
  per=$(( (n + SHARDS - 1) / SHARDS ))
  if [ "$ALIGN" = 1 ]; then per=$(( (per + BATCH - 1) / BATCH * BATCH )); fi
  for ((i = 0; i < SHARDS; i++)); do
    off=$(( i * per )); cnt=$(( n - off )); (( cnt > per )) && cnt=$per; (( cnt < 0 )) && cnt=0
    echo "$i $off $cnt"
  done
}

shard_file() { printf '%s/%04d.tzst' "$WORK" "$1"; }

# one I: shard I's pipeline into its file (atomically: a temporary name, renamed on success).
one() {
  local i=${1:-${SLURM_ARRAY_TASK_ID:-}}
  [[ "$i" =~ ^[0-9]+$ ]] || die "which shard? give I or run as a Slurm array task"
  (( i < SHARDS )) || die "shard $i of $SHARDS does not exist"
  local line off cnt f tmp
  line=$(plan | sed -n "$((i + 1))p"); read -r _ off cnt <<<"$line"
  f=$(shard_file "$i"); tmp="$f.part.$$"
  mkdir -p "$WORK"
  if [ -e "$f" ]; then log "shard $i: kept $f"; return 0; fi
  if [ "$cnt" = 0 ]; then : > "$f"; return 0; fi   # an empty file is a valid stream of no records
  local src=() emb=() sco=()
  if [ -n "$MODEL" ]; then
    # shellcheck disable=SC2206
    src=(sample --model "$MODEL" --n "$cnt" --offset "$off" --batch "$BATCH" --seed "$SEED" --threads "$THREADS" --quiet $SAMPLE_FLAGS)
  else
    src=(tensors head --skip "$off" --n "$cnt" "$INPUT")
  fi
  if [ "$ENCODER" = pixels ]; then
    # shellcheck disable=SC2206
    emb=(embed --pixels --threads "$THREADS" --quiet $EMBED_FLAGS)
  elif [ -n "$ENCODER" ]; then
    # shellcheck disable=SC2206
    emb=(embed --encoder "$ENCODER" --threads "$THREADS" --quiet $EMBED_FLAGS)
  else
    emb=(cat)
  fi
  if [ -n "$DISC" ]; then
    # shellcheck disable=SC2206
    sco=(discrim score --model "$DISC" --threads "$THREADS" $SCORE_FLAGS)
  else
    sco=(cat)
  fi
  if ! "${src[@]}" | "${emb[@]}" | "${sco[@]}" > "$tmp"; then
    rm -f "$tmp"; die "shard $i (samples $off..$((off + cnt - 1))) failed"
  fi
  mv -f "$tmp" "$f"
  log "shard $i: samples $off..$((off + cnt - 1)) -> $f"
}

# join: every shard's file, in shard order, into OUT (atomically).
join() {
  local i f files=()
  for ((i = 0; i < SHARDS; i++)); do
    f=$(shard_file "$i"); [ -e "$f" ] || die "shard $i is missing ($f): run it again"
    files+=("$f")
  done
  cat "${files[@]}" > "$OUT.part.$$" && mv -f "$OUT.part.$$" "$OUT"
  log "joined $SHARDS shards into $OUT"
}

run_parallel() {
  command -v parallel >/dev/null || die "GNU parallel is not installed (Debian: apt-get install parallel; make deps does)"
  local flags=(--halt now,fail=1 --will-cite)
  [ -n "$JOBS" ] && flags+=(--jobs "$JOBS")
  if [ -n "$SSHLOGIN" ]; then
    # Remote shards see the same paths (a shared filesystem) and the settings through --env.
    flags+=(--sshlogin "$SSHLOGIN" --workdir .)
    for v in $SETTINGS; do flags+=(--env "$v"); done
  fi
  # shellcheck disable=SC2206
  flags+=($PARALLEL_FLAGS)
  seq 0 $((SHARDS - 1)) | parallel "${flags[@]}" bash "$here/shard.sh" one {} \
    || die "GNU parallel: a shard failed (its error is above); finished shards are kept in $WORK"
}

run_slurm() {
  command -v sbatch >/dev/null || die "sbatch not found (Slurm's client)"
  mkdir -p "$WORK"
  local array=(--array "0-$((SHARDS - 1))" --job-name drl-shard --output "$WORK/slurm-%A_%a.log" --export ALL)
  # shellcheck disable=SC2206
  local extra=($SBATCH_FLAGS)
  if [ "$SLURM_WAIT" = 1 ]; then
    sbatch --wait "${array[@]}" "${extra[@]}" --wrap "bash '$here/shard.sh' one" >&2 \
      || die "Slurm: a shard failed (logs: $WORK/slurm-*.log); finished shards are kept in $WORK"
    join
  else
    local id
    id=$(sbatch --parsable "${array[@]}" "${extra[@]}" --wrap "bash '$here/shard.sh' one")
    sbatch --parsable --dependency "afterok:$id" --job-name drl-shard-join --output "$WORK/slurm-join-%j.log" \
      --export ALL "${extra[@]}" --wrap "bash '$here/shard.sh' join"
  fi
}

cmd=${1:-run}
case "$cmd" in
  plan) plan ;;
  one) one "${2:-}" ;;
  join) join ;;
  run)
    case "$ENGINE" in
      parallel) run_parallel; join ;;
      slurm) run_slurm ;;
      serial) for ((i = 0; i < SHARDS; i++)); do one "$i"; done; join ;;
      *) die "ENGINE must be parallel, slurm or serial, not '$ENGINE'" ;;
    esac ;;
  *) die "unknown subcommand '$cmd' (run, one, join, plan)" ;;
esac
