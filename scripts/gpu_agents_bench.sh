#!/usr/bin/env bash
# Issue 13 on one GPU: the newsroom's agents through their HTTP APIs ("colo bench agents"), one device call.
#
#   scripts/gpu_agents_bench.sh          (env: OUT, PYTHON, BENCH_WINDOW=15, BENCH_CLIENTS=1,3,16, BENCH_LONE=1)
#
# A CPU dry run of the plumbing (no MPS, a small config; the built-in agent runs on the CPU):
#   BENCH_CONFIG=small.yaml BENCH_MODES=timeslice BENCH_OLD_UP_ARGS=--no-mps BENCH_OLD_SRC=/tmp/old/src \
#   BENCH_WINDOW=3 scripts/gpu_agents_bench.sh
#
# (a) examples/newsroom/colo.sized.yaml (limits that hold) run by colo itself, MPS then time-slicing, at 1, 3
#     and 16 clients per agent, batch 8 × 128 per request (clamped to each model's worst case), BENCH_WINDOW s
#     windows after 2 s of warm-up; then each agent alone, one row per request (the batching wait);
# (b) the OLD agent side by side: the pre-batching tree in .baseline/src (commit f564d01's src/) runs the same
#     config with its own `colo up` (MPS), and the NEW bench drives it attached at 3 clients, then alone;
# (c) scripts/agents_targets.py judges issue 13's targets: GPU-RESULT lines and the final table.
#
# Writes to $OUT (default ./agents-bench-out): agents.json/.md/.png (new), old/agents.json/.md/.png, summary.json,
# gpu_agents_bench.log — 8 files. Expected wall time on an H200: ~6–8 minutes (three starts of nine agents).
# Every agent and MPS daemon is stopped at the end, also on failure or SIGTERM (trap): the bench stops the
# agents it started itself; the old build's `colo down` and a `colo down` of any bench state dir left over
# run on exit.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/agents-bench-out}"
mkdir -p "$OUT/old"
LOG="$OUT/gpu_agents_bench.log"
CONFIG="${BENCH_CONFIG:-$ROOT/examples/newsroom/colo.sized.yaml}"
MODES="${BENCH_MODES:-mps,timeslice}"
OLD_UP_ARGS="${BENCH_OLD_UP_ARGS:-}"
WINDOW="${BENCH_WINDOW:-15}"
CLIENTS="${BENCH_CLIENTS:-1,3,16}"
LONE="${BENCH_LONE:-1}"
PY="${PYTHON:-python3}"
# Where the machine keeps packages colo needs besides its source (e.g. wheels unpacked to /tmp/site on the
# lent GPU machine); added after the tree under test, never before it.
EXTRA_PYTHONPATH="${EXTRA_PYTHONPATH:-}"
NEW_SRC="$ROOT/src"
OLD_SRC="${BENCH_OLD_SRC:-$ROOT/.baseline/src}"
OLD_SD="$(mktemp -d /tmp/colo-old-agents-XXXXXX)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COLO_MAIN="from colo.cli.entry import main; main()"
STATUS=0

log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
new_colo() { PYTHONPATH="$NEW_SRC${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}" "$PY" -c "$COLO_MAIN" "$@"; }
old_colo() { PYTHONPATH="$OLD_SRC${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}" "$PY" -c "$COLO_MAIN" "$@"; }

cleanup() {
  trap - EXIT TERM INT
  log "cleanup: stopping every agent and MPS daemon"
  old_colo down --state-dir "$OLD_SD" --timeout 60 >>"$LOG" 2>&1 || true
  for sd in /tmp/colo-agents-bench-*; do
    [ -d "$sd" ] && new_colo down --state-dir "$sd" --timeout 60 >>"$LOG" 2>&1
  done
  if pgrep -af "colo.modelserver.serve" >>"$LOG" 2>&1; then
    log "WARNING: agents still running (listed above)"
  fi
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv >>"$LOG" 2>&1 || true
}
trap cleanup EXIT
trap 'log "interrupted"; exit 143' TERM INT

# run LIMIT_SECS CMD...: a step under a time limit (SIGTERM first: the bench stops what it started).
run() {
  local limit="$1"
  shift
  timeout -s TERM -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && log "step failed with status $rc: $*" && STATUS=1
  return 0
}

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv | tee "$LOG"
log "config $CONFIG, window ${WINDOW}s, clients $CLIENTS, lone ${LONE}s"

# (a) the new agents, colo starting them itself, MPS then time-slicing.
log "== (a) new agents: MPS and time-slicing"
run 300 env PYTHONPATH="$NEW_SRC${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}" "$PY" -c "$COLO_MAIN" bench agents "$CONFIG" --mode "$MODES" \
  --clients "$CLIENTS" --batch 8 --seq-len 128 --duration "$WINDOW" --warmup 2 --lone "$LONE" \
  --start-timeout 150 --out "$OUT"

# (b) the old agents (pre-batching tree), its own colo up with MPS; the new bench attached.
if [ -d "$OLD_SRC/colo" ]; then
  log "== (b) old agents (.baseline/src): colo up (MPS), state dir $OLD_SD"
  # shellcheck disable=SC2086  # OLD_UP_ARGS: words
  old_colo up "$CONFIG" --state-dir "$OLD_SD" --detach $OLD_UP_ARGS 2>&1 | tee -a "$LOG"
  run 170 env PYTHONPATH="$NEW_SRC${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}" "$PY" -c "$COLO_MAIN" bench agents "$CONFIG" --attach-config \
    --state-dir "$OLD_SD" --mode mps --clients 3 --batch 8 --seq-len 128 --duration "$WINDOW" --warmup 2 \
    --lone "$LONE" --start-timeout 150 --out "$OUT/old"
  old_colo down --state-dir "$OLD_SD" --timeout 60 2>&1 | tee -a "$LOG"
else
  log "== (b) skipped: no $OLD_SRC/colo (carry the pre-batching src/ as .baseline/src)"
fi

# (c) the targets.
log "== (c) issue 13's targets"
OLD_ARGS=()
[ -f "$OUT/old/agents.json" ] && OLD_ARGS=(--old "$OUT/old/agents.json")
if [ -f "$OUT/agents.json" ]; then
  PYTHONPATH="$NEW_SRC${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}" "$PY" scripts/agents_targets.py "$OUT/agents.json" "${OLD_ARGS[@]}" \
    --config "$CONFIG" --clients 3 --summary "$OUT/summary.json" 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -ne 0 ] && STATUS=1
else
  log "GPU-RESULT no results: the new bench wrote no agents.json"
  STATUS=1
fi
exit "$STATUS"
