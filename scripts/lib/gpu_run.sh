# Sourced by scripts/gpu_smoke.sh and scripts/gpu_suite.sh (from the repository root): the preamble both share.
#
#   gpu_run_preamble TEED_VAR LOG_NAME DEFAULT_WORK "$@"
#
# Sets $start (seconds since the epoch); makes $WORK (default DEFAULT_WORK) afresh, with $WORK/artifacts, and
# makes it absolute; when $OUT is set, runs the calling script again with TEED_VAR=1 and its output also to
# $OUT/LOG_NAME, then exits with that run's status; installs the wheels in .whl/ (see
# ../shared/tools/device-wheels.sh) into /tmp/site when there are any (pip's output in $WORK/pip.log) and
# exports PYTHONPATH (/tmp/site, then this tree's src).
gpu_run_preamble() {
  local teed_var=$1 log_name=$2
  WORK=${WORK:-$3}
  shift 3
  start=$(date +%s)
  [ -n "${!teed_var:-}" ] || { rm -rf "$WORK" && mkdir -p "$WORK/artifacts"; }
  WORK=$(cd "$WORK" && pwd)
  if [ -n "${OUT:-}" ] && [ -z "${!teed_var:-}" ]; then  # this output also to $OUT/$log_name
    mkdir -p "$OUT"
    env "$teed_var=1" WORK="$WORK" "$0" "$@" 2>&1 | tee "$OUT/$log_name"
    exit "${PIPESTATUS[0]}"
  fi
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >"$WORK/pip.log" 2>&1 || { echo "wheel install failed"; tail "$WORK/pip.log"; }
    export PYTHONPATH=/tmp/site:$PWD/src
  else
    export PYTHONPATH=$PWD/src
  fi
}
