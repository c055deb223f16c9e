#!/usr/bin/env bash
# colo's GPU smoke (`make gpu-smoke`, at most 120 s): the first thing to run after any GPU-facing change.
#
# The tests marked `smoke` of tests/gpu/test_supervise_gpu.py, on the shared newsroom: the MPS daemon and the
# sized newsroom up through `colo up` (nine agents RUNNING under MPS, each under its limit), one request per
# agent, SIGKILL of the MPS server and colo's recovery (every agent relaunched and answering), `colo down`
# with nothing left behind (no MPS process of its state dir, no agent, no zombie colo must reap). One line per
# step with its seconds, then the drills' result lines; interrupted (SIGINT: the newsroom still goes down) after
# SMOKE_SECS (default 115). Files as scripts/gpu_suite.sh: $WORK (out/gpu-smoke), and under $OUT smoke.log and
# gpu-smoke.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE_SECS=${SMOKE_SECS:-115}
. scripts/lib/gpu_run.sh
gpu_run_preamble COLO_SMOKE_TEED smoke.log out/gpu-smoke "$@"
export PYTHONUNBUFFERED=1 COLO_GPU_OUT="$WORK/artifacts" COLO_GPU_RESULTS="$WORK/results-smoke.jsonl"
echo "== GPU smoke $(date -u '+%Y-%m-%d %H:%M UTC'); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1); tree: $(tree_label)"
COLO_GPU_RUN="$WORK" timeout -s INT -k 20 "$SMOKE_SECS" python3 -m pytest -m "gpu and smoke" -q -s -rfEs -p no:cacheprovider -o addopts="" \
  -W "ignore::pytest.PytestUnraisableExceptionWarning" -W "ignore::ResourceWarning" \
  tests/gpu/test_supervise_gpu.py >"$WORK/smoke.log" 2>&1
prc=$?
grep -hE "^(FAILED|ERROR) " "$WORK/smoke.log" | cut -c1-400
python3 tests/gpu/leftovers.py "$WORK" >"$WORK/leftovers.txt" 2>&1; cat "$WORK/leftovers.txt"
echo "== drills =="
grep -h "GPU-RESULT drill=" "$WORK/smoke.log" | sed 's/^.*GPU-RESULT/GPU-RESULT/' | cut -c1-300
echo "== steps =="
python3 tests/gpu/suite.py --steps "$WORK/results-smoke.jsonl"
rc=$?
wall=$(( $(date +%s) - start ))
echo "smoke: pytest exit code $prc; wall ${wall} s (target 120 s: $([ "$wall" -le 120 ] && echo met || echo MISSED))"
grep -q "after the tests: none" "$WORK/leftovers.txt" || rc=1
[ -n "${OUT:-}" ] && tar czf "$OUT/gpu-smoke.tar.gz" -C "$WORK" . 2>/dev/null
[ $prc -ne 0 ] && rc=$prc
exit $rc
