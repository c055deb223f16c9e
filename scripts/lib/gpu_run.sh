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

# What tree ran, for the run's header: git's HEAD (the device's copy of .git may be older than the files it was
# sent with) and a hash of the sources themselves (files in C-locale order: the device's first header, 19:46 UTC
# 2026-12-06, gave a hash that this machine did not, most likely from a locale's collation), which `scripts/lib/gpu_run.sh` sourced by hand (or
# `bash -c '. scripts/lib/gpu_run.sh; sources_hash'`) reproduces on the machine the tree came from.
sources_hash() {
  find src tests scripts examples -type f \( -name '*.py' -o -name '*.sh' -o -name '*.yaml' \) -print0 2>/dev/null \
    | LC_ALL=C sort -z | xargs -0 sha1sum | sha1sum | cut -c1-12
}
tree_label() {
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?') (may be stale on the device), sources $(sources_hash)"
}
