#!/usr/bin/env bash
# The H100 benchmark behind docs/benchmarks.md ("colo bench"): MPS vs time-slicing, against the merged batch.
#
#   scripts/gpu_bench.sh [PART ...]      PARTs: encoder decode newsroom hf_decode (default: all four, in that order)
#
# Writes bench.json, bench.md, bench.png and bench.log to $OUT (default ./bench-out), rewritten after every
# run, so a run cut short keeps what finished. colo need not be installed: PYTHONPATH=src is set here.
# Expected wall time on an H100 with the default 5 s per point: ~7 minutes for all parts. Every MPS daemon
# is colo's own (a private pipe dir under /tmp) and is quit after each point, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench-out}"
DURATION="${BENCH_DURATION:-5}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv | tee "$OUT/bench.log"
set +e
"$PY" -m colo.bench.suite --out "$OUT" --duration "$DURATION" "$@" 2>&1 | tee -a "$OUT/bench.log"
status=${PIPESTATUS[0]}
set -e
# Nothing of ours may be left behind: no instance process, no private MPS directory (removed after its
# daemon quit).
if pgrep -f "colo.bench.instance" >/dev/null 2>&1; then
  echo "WARNING: benchmark instances still running:" | tee -a "$OUT/bench.log"
  pgrep -af "colo.bench.instance" | tee -a "$OUT/bench.log" || true
fi
if compgen -G "/tmp/colo-bench-*" >/dev/null; then
  echo "WARNING: left-over MPS directories:" /tmp/colo-bench-* | tee -a "$OUT/bench.log"
fi
exit "$status"
