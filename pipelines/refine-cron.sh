#!/usr/bin/env bash
# One DRL refinement round, safe to run from cron:
#   */30 * * * * cd /path/to/drl-toolkit && PATH=/path/to/bin:$PATH RUN=runs/prod bash pipelines/refine-cron.sh >> runs/prod/cron.log 2>&1
# - a lock (flock -n): a run that finds another still going exits 0 at once;
# - resumable: a kill at any point leaves either the old model or a complete candidate (rlstep
#   writes atomically); the next run evaluates an orphaned candidate instead of redoing the round;
# - atomic promotion: the candidate becomes $RUN/$NAME/current.safetensors by rename(2);
# - one JSON line per run in $RUN/$NAME/cron-metrics.jsonl;
# - stop rule: a candidate whose held-out FD is worse than the current model's by more than
#   $TOLERANCE (relative) is not promoted and the file STOPPED is written; later runs do nothing
#   until it is removed.
# - a killed run's leftovers (rlstep's and cp's temporary files, a half-written state) are removed
#   by the next run, under the lock.
# Needs $RUN/base.safetensors, the encoders and the discriminator (pretrain.sh, drl.sh stage 1);
# ENC_DISC=pixels (the demo's discriminator) needs no encoder file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
RUN=${RUN:-runs/demo}
NAME=${NAME:-cron}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
BASE=${BASE:-$RUN/base.safetensors}
ENC_DISC=${ENC_DISC:-$RUN/enc-disc.safetensors}   # or "pixels", as in drl.sh
DISC_HEAD=${DISC_HEAD:-linear}
R1=${R1:-0}
R1_EVERY=${R1_EVERY:-1}
DISC=${DISC:-$(default_disc "$RUN" "$DISC_HEAD" "$R1" "$R1_EVERY")}   # drl.sh stage 1's name for it
N=${N:-256}
STEPS=${STEPS:-20}
LAMBDA=${LAMBDA:-10}
LR=${LR:-1e-4}
EPOCHS=${EPOCHS:-2}
MINIBATCH=${MINIBATCH:-64}
TOLERANCE=${TOLERANCE:-0}              # allowed relative FD increase before stopping
EXP=$RUN/$NAME
mkdir -p "$EXP"
export RUN THREADS
RESULTS=$EXP/results.tsv; export RESULTS

exec 9>"$EXP/.lock"
if ! flock -n 9; then echo "refine-cron: another run holds $EXP/.lock; nothing to do" >&2; exit 0; fi
if [ -e "$EXP/STOPPED" ]; then echo "refine-cron: stopped ($(cat "$EXP/STOPPED")); remove $EXP/STOPPED to go on" >&2; exit 0; fi
enc=(); [ "$ENC_DISC" = pixels ] || enc=(--encoder "$ENC_DISC")   # pixel features need no encoder
for f in "$BASE" "${enc[@]:1}" "$DISC"; do
  [ -s "$f" ] || { echo "refine-cron: $f missing (run pretrain.sh and drl.sh stage 1 first)" >&2; exit 1; }
done
t0=$SECONDS
current=$EXP/current.safetensors
candidate=$EXP/candidate.safetensors
state=$EXP/state.json                  # {"digest": sha256 of current, "fd_eval": its FD, "round": k}
# Left by a killed run (we hold the lock, so nothing is writing them): rlstep's temporary
# checkpoint (AtomicFile's .NAME.tmp-PID), the copy of the base, atomic_write's temporaries.
rm -f "$EXP"/.candidate.safetensors.tmp-* "$current.tmp" "$state".??????

atomic_write() {  # $1 = path; content on stdin
  local tmp; tmp=$(mktemp "$1.XXXXXX"); cat > "$tmp"; mv -f "$tmp" "$1"
}
digest() { sha256sum "$1" | cut -d' ' -f1; }
fd_of() {  # $1 = checkpoint, $2 = label, $3 = round -> prints the held-out FD
  bash "$here/evaluate.sh" "$1" "$2" "$3" | cut -f3
}

if [ ! -s "$current" ]; then
  cp "$BASE" "$current.tmp" && mv -f "$current.tmp" "$current"
fi
round=0; fd_cur=""
if [ -s "$state" ] && [ "$(jq -r .digest "$state")" = "$(digest "$current")" ]; then
  round=$(jq -r .round "$state"); fd_cur=$(jq -r .fd_eval "$state")
fi
if [ -z "$fd_cur" ]; then  # first run, or killed between promotion and the state update
  [ -s "$state" ] && round=$(( $(jq -r .round "$state") + 1 ))
  fd_cur=$(fd_of "$current" current "$round")
  jq -n --arg d "$(digest "$current")" --argjson fd "$fd_cur" --argjson r "$round" '{digest: $d, fd_eval: $fd, round: $r}' | atomic_write "$state"
fi

cur_digest=$(digest "$current")
if [ -s "$candidate" ] && [ "$(ckpt_meta "$candidate" parent_sha256)" != "$cur_digest" ]; then
  rm -f "$candidate"                     # a candidate from another parent: stale
fi
next=$(( round + 1 ))
if [ ! -s "$candidate" ]; then
  # shellcheck disable=SC2046
  sample --model "$current" $(sample_weights "$current") --n "$N" --offset $(( round * N )) --seed "$SEED" \
      --sampler memoryless-ll --steps "$STEPS" --record --threads "$THREADS" --quiet \
    | discrim score --model "$DISC" --grad "${enc[@]}" --threads "$THREADS" \
    | rlstep --algo am --model "$current" --ref "$BASE" --out "$candidate" --lambda "$LAMBDA" --lr "$LR" \
        --epochs "$EPOCHS" --minibatch "$MINIBATCH" --seed "$SEED" --threads "$THREADS" --metrics "$EXP/rl-metrics.jsonl"
fi
fd_new=$(fd_of "$candidate" candidate "$next")
promoted=false
if jq -n --argjson a "$fd_new" --argjson b "$fd_cur" --argjson t "$TOLERANCE" -e '$a <= $b * (1 + $t)' >/dev/null; then
  mv -f "$candidate" "$current"          # rename(2): readers see the old or the new file, never half
  jq -n --arg d "$(digest "$current")" --argjson fd "$fd_new" --argjson r "$next" '{digest: $d, fd_eval: $fd, round: $r}' | atomic_write "$state"
  promoted=true
else
  echo "round $next: held-out FD $fd_new > $fd_cur at $(date -u +%FT%TZ)" | atomic_write "$EXP/STOPPED"
  rm -f "$candidate"
fi
jq -cn --arg time "$(date -u +%FT%TZ)" --argjson round "$next" --argjson fd_before "$fd_cur" --argjson fd_candidate "$fd_new" \
  --argjson promoted "$promoted" --argjson seconds $(( SECONDS - t0 )) \
  '{time: $time, round: $round, fd_before: $fd_before, fd_candidate: $fd_candidate, promoted: $promoted, seconds: $seconds}' \
  >> "$EXP/cron-metrics.jsonl"
tail -n 1 "$EXP/cron-metrics.jsonl"
