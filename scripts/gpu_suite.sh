#!/usr/bin/env bash
# Run colo's GPU tests on a machine with an NVIDIA GPU, one file at a time with a time budget each, and
# print a short table at the end. Logs go to $OUT (or ./out/gpu). Usage:
#   scripts/gpu_suite.sh [TEST_FILE ...]        (default: every tests/gpu/test_*.py)
# Environment: PER_FILE_SECS (default 240). Wheels in .whl/ (see ../shared/tools/device-wheels.sh) are
# installed into /tmp/site first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail "$OUT/pip.log"; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 COLO_GPU_OUT="$OUT"
PER_FILE_SECS=${PER_FILE_SECS:-240}
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(tests/gpu/test_*.py)
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv,noheader 2>&1 | tee "$OUT/machine.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$OUT/machine.txt"
summary=()
for f in "${files[@]}"; do
  name=$(basename "$f" .py)
  start=$(date +%s)
  timeout -k 10 "$PER_FILE_SECS" python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="" -s \
    -W "ignore::pytest.PytestUnraisableExceptionWarning" -W "ignore::ResourceWarning" \
    "$f" >"$OUT/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  line=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped)|no tests ran|passed|failed" "$OUT/$name.log" | tail -1)
  summary+=("$(printf '%-34s rc=%-3s %4ss  %s' "$name" "$rc" "$secs" "$line")")
done
# Leftover MPS daemons from a broken test would be a bug: report them (tests must quit their own).
left=$(pgrep -af nvidia-cuda-mps || true)
echo
echo "== GPU-RESULT lines =="
grep -h "GPU-RESULT" "$OUT"/*.log 2>/dev/null | sed 's/^.*GPU-RESULT/GPU-RESULT/' | sort -u | head -80
echo
echo "== failures (last lines) =="
for f in "$OUT"/*.log; do
  if grep -qE "(FAILED|ERROR|Timeout)" "$f"; then echo "--- $f"; grep -E "^(FAILED|ERROR)|Error|assert" "$f" | head -12; fi
done
echo
echo "== leftover MPS processes: ${left:-none}"
echo "== summary =="
printf '%s\n' "${summary[@]}"
