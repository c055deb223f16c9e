#!/usr/bin/env bash
# colo's whole GPU suite in one run (`make gpu-test`), on a machine with an NVIDIA GPU, MPS and torch.
#
#   scripts/gpu_suite.sh [PYTEST_ARGS ...]      (default: every test of tests/gpu marked gpu)
#
# Three pytest processes run at once (lanes a, b, c: tests/gpu/suite.py says which test runs where; lane a is
# the shared newsroom and its drills). Each lane is interrupted (SIGINT: fixtures still tear down) after
# SUITE_SECS (default 500) and killed 30 s later, so the table always prints. What the tests left running is
# then listed and killed (tests/gpu/leftovers.py). The per-file table (seconds, passed/failed) is printed LAST.
#
# Files: everything goes to $WORK (out/gpu-suite). Under $OUT (the device tool's folder; at most a few files
# come back) go suite.log (this output), table.md (the rows for docs/testing.md) and gpu-suite.tar.gz (every
# lane's log, the records, the tests' artifacts and kept logs: $COLO_GPU_OUT). Wheels in .whl/ (see
# ../shared/tools/device-wheels.sh) are installed into /tmp/site first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE_SECS=${SUITE_SECS:-500}
. scripts/lib/gpu_run.sh
gpu_run_preamble COLO_SUITE_TEED suite.log out/gpu-suite "$@"
export PYTHONUNBUFFERED=1 COLO_GPU_OUT="$WORK/artifacts"
machine=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
torchv=$(python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" 2>&1 | tail -1)
echo "== GPU suite $(date -u '+%Y-%m-%d %H:%M UTC'); tree: $(tree_label); $machine; $torchv"

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(tests/gpu)
lane() {
  local name=$1 t0=$(date +%s)
  COLO_GPU_RUN="$WORK" COLO_GPU_LANE=$name COLO_GPU_RESULTS="$WORK/results-$name.jsonl" \
    timeout -s INT -k 30 "$SUITE_SECS" python3 -m pytest -m gpu -q -s -rfEs -p no:cacheprovider -o addopts="" --continue-on-collection-errors \
    -W "ignore::pytest.PytestUnraisableExceptionWarning" -W "ignore::ResourceWarning" \
    "${args[@]}" >"$WORK/lane-$name.log" 2>&1
  local rc=$?
  echo "lane $name: exit code $rc after $(( $(date +%s) - t0 )) s" | tee "$WORK/lane-$name.rc"
}
lane a & pa=$!
lane b & pb=$!
lane c & pc=$!
( while sleep 30; do  # a line every 30 s: tests done so far
    n=$(cat "$WORK"/results-*.jsonl 2>/dev/null | grep -c '"event": "ran"')
    m=$(cat "$WORK"/results-*.jsonl 2>/dev/null | grep -c '"event": "collected"')
    echo "... $(( $(date +%s) - start )) s: $n of $m tests done"
  done ) &
progress=$!
wait $pa $pb $pc
kill $progress 2>/dev/null

echo
python3 tests/gpu/leftovers.py "$WORK" >"$WORK/leftovers.txt" 2>&1; cat "$WORK/leftovers.txt"
echo
echo "== GPU-RESULT lines (whole lines in the lanes' logs) =="
grep -h "GPU-RESULT" "$WORK"/lane-*.log 2>/dev/null | sed 's/^.*GPU-RESULT/GPU-RESULT/' | cut -c1-220
echo
echo "== failures =="
grep -hE "^(FAILED|ERROR) " "$WORK"/lane-*.log 2>/dev/null | cut -c1-400 || true
grep -hE "Timeout|KeyboardInterrupt" "$WORK"/lane-*.log 2>/dev/null | head -5 || true
wall=$(( $(date +%s) - start ))
echo
echo "== summary: $machine; $torchv; wall ${wall} s (target 480 s: $([ "$wall" -le 480 ] && echo met || echo MISSED))"
cat "$WORK"/lane-*.rc
python3 tests/gpu/suite.py "$WORK"/results-*.jsonl --markdown "$WORK/table.md"
rc=$?
if [ -s "$WORK/leftovers.txt" ] && ! grep -q "after the tests: none" "$WORK/leftovers.txt"; then
  echo "leftover processes after the tests (listed above): a test did not clean up"
  rc=1
fi
if [ -n "${OUT:-}" ]; then
  cp "$WORK/table.md" "$OUT/table.md" 2>/dev/null
  tar czf "$OUT/gpu-suite.tar.gz" -C "$WORK" . 2>/dev/null
fi
exit $rc
