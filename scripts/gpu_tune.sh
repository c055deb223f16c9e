#!/usr/bin/env bash
# Issue 14 on one GPU: `colo tune` closes the loop on the measured newsroom, one device call.
#
#   scripts/gpu_tune.sh                       (env: OUT, PYTHON, DURATION=180, CLIENTS=3, CONFIG)
#   DRY_RUN=1 OUT=/tmp/x scripts/gpu_tune.sh  (CPU: a two-agent bert-tiny config, no MPS, DURATION=20; the
#                                              plumbing only — no GPU memory is read, so nothing is proposed)
#
# Steps: 1 `colo up` CONFIG (examples/newsroom/colo.sized.yaml) detached, in a fresh state dir · 2 a mixed load
# of DURATION s through every agent's HTTP API (python scripts/tune_run.py load: per model a typical
# request and its worst case, batch_size × max_seq_len) · 3 `colo tune` (table, then --json: totals before and
# after) · 4 `colo tune --apply` (the rolling apply of `colo apply`), wait until every agent RUNNING at its
# new limit · 5 the same load again · 6 the targets (python scripts/tune_run.py report): each agent's peak /
# limit ≥ 0.85 and 0 out-of-memory errors / HTTP 507 during the second run, total allocation before/after ·
# `colo down` always (trap).
# $OUT gets: gpu_tune.log, tune_before.json, tune_apply.json, load1.json, load2.json, report.md, events.json.
# Wall time on an H200 with DURATION=180: 584 s (2026-11-29: up 26 s, two loads of 185 s, the rolling apply of
# nine agents 166 s) — just inside one 10-minute device call; DURATION=150 leaves room.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/tune-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_tune.log"
DRY="${DRY_RUN:-0}"
PY="${PYTHON:-python3}"
CLIENTS="${CLIENTS:-3}"
UP_ARGS=()
if [ "$DRY" = 1 ]; then
  DURATION="${DURATION:-20}"
  CONFIG="${CONFIG:-$OUT/dry.yaml}"
  cat >"$CONFIG" <<'EOF'
version: 1
gpus: [{memory: 24GiB}]
api: {port: 18914}
models:
  google/bert_uncased_L-2_H-128_A-2: {memory: 1GiB, batch_size: 4, max_seq_len: 64}
agents:
  a: {models: [google/bert_uncased_L-2_H-128_A-2], port: 18901}
  b: {models: [google/bert_uncased_L-2_H-128_A-2], port: 18902}
EOF
  UP_ARGS=(--no-mps)
else
  DURATION="${DURATION:-180}"
  CONFIG="${CONFIG:-$ROOT/examples/newsroom/colo.sized.yaml}"
fi
if ls .whl/*.whl >/dev/null 2>&1 && [ "$DRY" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/tmp/colo-tune-pip.log 2>&1 || echo "wheel install failed (see /tmp/colo-tune-pip.log)"
  export PYTHONPATH="$ROOT/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SD="$(mktemp -d /tmp/colo-tune-XXXXXX)"
T0=$(date +%s)
STATUS=0
exec > >(tee -a "$LOG") 2>&1
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
colo() { "$PY" -c 'import sys; sys.argv[0] = "colo"; from colo.cli.entry import main; main()' "$@"; }

cleanup() {
  trap - EXIT TERM INT
  say "cleanup: colo down"
  colo status --state-dir "$SD" || true
  "$PY" - "$SD" >"$OUT/events.json" 2>/dev/null <<'EOF' || true
import json, sys
from colo.supervise.store import Store
s = Store(sys.argv[1] + "/colo.db")
print(json.dumps([e.to_dict() for e in s.events(0, 100000) if e.kind.value in ("out_of_memory", "rolled_back", "applied")], indent=1))
EOF
  colo down --state-dir "$SD" --timeout 60 || true
  pgrep -af "colo.modelserver.serve" && say "WARNING: agents still running"
  rm -rf "$SD"
  say "done, status $STATUS"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 143' TERM INT

[ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
say "config $CONFIG, state dir $SD, load ${DURATION}s × 2 at $CLIENTS clients per agent"

say "1. colo up"
colo up "$CONFIG" --state-dir "$SD" --detach "${UP_ARGS[@]}" || { say "colo up failed"; exit 1; }

say "2. first load (${DURATION}s)"
"$PY" scripts/tune_run.py load "$CONFIG" --duration "$DURATION" --clients "$CLIENTS" --out "$OUT/load1.json" || STATUS=1

say "3. colo tune"
colo tune "$CONFIG" --state-dir "$SD" || STATUS=1
colo tune "$CONFIG" --state-dir "$SD" --json >"$OUT/tune_before.json" || STATUS=1
"$PY" - "$OUT/tune_before.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"total allocation before {d['total_before_bytes'] / 2**30:.2f} GiB, after {d['total_after_bytes'] / 2**30:.2f} GiB")
EOF

say "4. colo tune --apply"
colo tune "$CONFIG" --state-dir "$SD" --apply --json >"$OUT/tune_apply.json" || STATUS=1
"$PY" - "$SD" "$CONFIG" <<'EOF' || STATUS=1
import json, subprocess, sys, time
sd, config = sys.argv[1], sys.argv[2]
from colo.spec import load_config
from colo.supervise.tune import limits_file
want = limits_file.applicable(load_config(config), limits_file.load(sd + "/tuned_limits.json"))
cmd = [sys.executable, "-c", "import sys; sys.argv[0]='colo'; from colo.cli.entry import main; main()",
       "status", "--json", "--state-dir", sd]
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    agents = {a["name"]: a for a in json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout)["agents"]}
    if all(a["state"] == "RUNNING" for a in agents.values()) and all(
        agents[n]["limit_bytes"] == t.limit_bytes for n, t in want.items()):
        print(f"rolled out: {len(want)} agent(s) at their tuned limits, every agent RUNNING")
        sys.exit(0)
    time.sleep(2)
print("the rolling apply did not finish in 300 s")
sys.exit(1)
EOF

SINCE=$("$PY" -c 'import time; print(time.time())')
say "5. second load (${DURATION}s)"
"$PY" scripts/tune_run.py load "$CONFIG" --duration "$DURATION" --clients "$CLIENTS" --out "$OUT/load2.json" || STATUS=1
sleep 12  # one more history window (10 s) so the run's last window is written

say "6. targets"
DRY_ARG=()
[ "$DRY" = 1 ] && DRY_ARG=(--dry-run)
"$PY" scripts/tune_run.py report "$CONFIG" --state-dir "$SD" --tune "$OUT/tune_before.json" --since "$SINCE" \
  --load "$OUT/load2.json" "${DRY_ARG[@]}" | tee "$OUT/report.md"
[ "${PIPESTATUS[0]}" -ne 0 ] && STATUS=1
exit "$STATUS"
