#!/usr/bin/env bash
# The Ollama guide, for real: llama.cpp's llama-server (the engine inside Ollama) built, profiled, run under
# colo and measured, in ONE device call (H200, 16 cores, CUDA 13, no network; ~8 min with the build, ~4 min
# when /tmp/llw/build/bin/llama-server is already there).
#
#   OUT=/path scripts/gpu_llama.sh          (the lead's run: carry .llama, i.e. .llama/llama.cpp-min.tar.gz)
#   DRY_RUN=1 OUT=/tmp/x scripts/gpu_llama.sh  (CPU: tests/fakes/fake_llama_server.py as llama-server, no MPS)
#
# Steps: 1 build llama-server in /tmp/llw (skipped when built) · 2 random-weight Llama-3.1-8B Q4_K GGUF
# (`colo bench make-gguf`, tokenizer from llama.cpp's ggml-vocab-llama-bpe.gguf) · 3 `colo profile` both example
# configs (peaks into the model DB) and `colo plan --from-db` · 4 `colo up` the three servers under MPS, memory
# per server, `colo bench servers --setup mps` (N = 1, 2, 3), then the recovery drill (SIGKILL the MPS server)
# · 5 the same three servers time-sliced (`colo up --no-mps`), `--setup timeslice` · 6 one server with 3 slots
# (colo.batching.yaml), `--setup batching` · 7 `colo capacity`, `colo advise`, results.{json,md}.
# $OUT gets at most 8 files: results.json results.md bench.json bench.md bench.png gpu_llama.log llama-logs.txt.
# Knobs: BENCH_DURATION (s per point, default 6), MAX_TOKENS (per request, default 128), LLAMA_TARBALL,
# PYTHON (the interpreter with colo's dependencies), BUILD_ONLY=1 (stop after the build: split into two calls
# while the machine stays warm, if one call would run past its limit).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT="${OUT:-$PWD/llama-out}"
LLW=/tmp/llw
W=/tmp/colo-llama                      # the example configs' paths point here
RES="$W/results"
DURATION="${BENCH_DURATION:-6}"
MAX_TOKENS="${MAX_TOKENS:-128}"
TARBALL="${LLAMA_TARBALL:-$REPO/.llama/llama.cpp-min.tar.gz}"
PY="${PYTHON:-python3}"
DRY="${DRY_RUN:-0}"
mkdir -p "$OUT" "$W" "$RES"
LOG="$OUT/gpu_llama.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
colo() { "$PY" -c 'import sys; sys.argv[0] = "colo"; from colo.cli.entry import main; main()' "$@"; }
export PYTHONPATH="$REPO/src:$LLW/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

finish() {
  say "cleanup: colo down (both configs)"
  for c in "$W/colo.yaml" "$W/colo.batching.yaml"; do [ -f "$c" ] && colo down --config "$c" --timeout 60 >/dev/null 2>&1; done
  for f in bench.json bench.md bench.png; do [ -f "$RES/bench/$f" ] && cp "$RES/bench/$f" "$OUT/"; done
  "$PY" "$REPO/scripts/gpu_llama.py" summary "$RES" && cp "$RES/results.json" "$RES/results.md" "$OUT/"
  tail -n 40 "$W"/state/logs/*.log > "$OUT/llama-logs.txt" 2>/dev/null || true
  say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}
trap finish EXIT

# --- 1. llama-server ----------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  mkdir -p "$W/bin"
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$PY" "$REPO/tests/fakes/fake_llama_server.py" > "$W/bin/llama-server"
  chmod +x "$W/bin/llama-server"
  export PATH="$W/bin:$PATH"
  if [ ! -d "$LLW/llama.cpp/gguf-py" ] && [ -f "$TARBALL" ]; then mkdir -p "$LLW" && tar xzf "$TARBALL" -C "$LLW"; fi
else
  if [ ! -x "$LLW/build/bin/llama-server" ]; then
    [ -f "$TARBALL" ] || { echo "no llama.cpp source at $TARBALL (carry .llama, see ../shared/tools/llama-src.sh)"; exit 2; }
    say "build: unpack + configure + build llama-server (-j16)"
    rm -rf "$LLW" && mkdir -p "$LLW" && tar xzf "$TARBALL" -C "$LLW"
    cmake -S "$LLW/llama.cpp" -B "$LLW/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF >/dev/null \
      && cmake --build "$LLW/build" --target llama-server -j16 2>&1 | tail -n 3
    [ -x "$LLW/build/bin/llama-server" ] || { echo "GPU-RESULT step=build ok=False"; exit 1; }
  fi
  export PATH="$LLW/build/bin:$PATH"
  say "GPU-RESULT step=build ok=True seconds=$(( $(date +%s) - T0 ))"
fi
LLAMA_VERSION=$(llama-server --version 2>&1 | grep -i -m1 version || echo unknown)
if [ "${BUILD_ONLY:-0}" = 1 ]; then say "BUILD_ONLY: $LLAMA_VERSION"; trap - EXIT; exit 0; fi

# --- 2. the model -----------------------------------------------------------------------------------------
GGUF="$W/llama-3.1-8b-q4_k.gguf"
VOCAB="$LLW/llama.cpp/models/ggml-vocab-llama-bpe.gguf"
if [ ! -s "$GGUF" ]; then
  say "make-gguf: random-weight Llama-3.1-8B Q4_K"
  args=(--shape llama-3.1-8b --quant q4_k --out "$GGUF")
  [ -f "$VOCAB" ] && args+=(--vocab-from "$VOCAB")
  [ "$DRY" = 1 ] && args=(--shape tiny --out "$GGUF")
  t=$(date +%s); colo bench make-gguf "${args[@]}" || exit 1
  say "GPU-RESULT step=make-gguf seconds=$(( $(date +%s) - t )) bytes=$(stat -c %s "$GGUF")"
fi

for c in colo.yaml colo.batching.yaml; do
  if [ "$DRY" = 1 ]; then  # no NVML here: plan for an inventory instead of `gpus: auto`
    sed 's/^gpus: auto$/gpus: [{name: NVIDIA H200, memory: 141GiB}]/' "examples/ollama-guide/$c" > "$W/$c"
  else
    cp "examples/ollama-guide/$c" "$W/$c"
  fi
done
if [ "$DRY" = 1 ]; then
  GPU_NAME="NVIDIA H200"; DRIVER=none; NO_MPS=--no-mps; DRILL_FAKE=--fake
else
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)
  NO_MPS=""; DRILL_FAKE=""
fi
cat > "$RES/versions.json" <<EOF
{"gpu": "$GPU_NAME", "driver": "$DRIVER", "llama_server": "$LLAMA_VERSION", "dry_run": $DRY,
 "colo_commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)", "model": "random-weight Llama-3.1-8B Q4_K (colo bench make-gguf)",
 "bench_duration_secs": $DURATION, "max_tokens": $MAX_TOKENS}
EOF
say "GPU-RESULT step=versions gpu=\"$GPU_NAME\" driver=$DRIVER llama_server=\"$LLAMA_VERSION\""

# --- 3. profile -> model DB -> plan -----------------------------------------------------------------------
rm -f "$W/state/model_db.json"
if [ "$DRY" = 1 ]; then
  say "profile: skipped in the dry run (no NVML; covered by tests/unit/profiling)"
else
  for c in colo.yaml colo.batching.yaml; do
    say "colo profile $c"
    colo profile "$W/$c" --json > "$RES/profile-${c%.yaml}.json"
    "$PY" - "$RES/profile-${c%.yaml}.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    peak = r["nvml_peak_bytes"] or 0
    print(f"GPU-RESULT step=profile job={r['job']} ok={r['ok']} nvml_peak_mib={peak / 2**20:.0f} samples={r['samples']} error={r['error'][:200]!r}")
EOF
  done
fi
colo plan "$W/colo.yaml" --from-db --json > "$RES/plan.json" && say "GPU-RESULT step=plan ok=True"

bench() {  # $1 setup, then URLs
  local setup=$1; shift
  local urls=(); for u in "$@"; do urls+=(--url "$u"); done
  say "colo bench servers --setup $setup (${#@} server(s), N = 1,2,3, $DURATION s per point)"
  colo bench servers "${urls[@]}" --setup "$setup" --api openai-chat --model llama-3.1-8b-q4_k \
    --max-tokens "$MAX_TOKENS" --ignore-eos -n 1,2,3 --duration "$DURATION" --title "llama-server, Llama-3.1-8B Q4_K" \
    --append --out "$RES/bench" --gpu 0 > /dev/null
}
up() {  # $1 config, $2 extra flag
  say "colo up $1 $2"
  colo up -d "$1" $2 --force || return 1
  "$PY" "$REPO/scripts/gpu_llama.py" wait "$1" --timeout 150
}
down() { colo down --config "$1" --timeout 60 > /dev/null; }
S=(http://127.0.0.1:9301 http://127.0.0.1:9302 http://127.0.0.1:9303)

# --- 4. three servers under MPS, then the drill --------------------------------------------------------------
rm -rf "$RES/bench"
if up "$W/colo.yaml" "$NO_MPS"; then
  "$PY" "$REPO/scripts/gpu_llama.py" memory "$W/colo.yaml" --setup mps --out "$RES/memory-mps.json"
  bench mps "${S[@]}"
  "$PY" "$REPO/scripts/gpu_llama.py" drill "$W/colo.yaml" --out "$RES/drill.json" $DRILL_FAKE
fi
down "$W/colo.yaml"

# --- 5. the same three servers, time-sliced -----------------------------------------------------------------
if up "$W/colo.yaml" --no-mps; then
  "$PY" "$REPO/scripts/gpu_llama.py" memory "$W/colo.yaml" --setup timeslice --out "$RES/memory-timeslice.json"
  bench timeslice "${S[@]}"
fi
down "$W/colo.yaml"

# --- 6. one server, three slots -----------------------------------------------------------------------------
if up "$W/colo.batching.yaml" --no-mps; then
  "$PY" "$REPO/scripts/gpu_llama.py" memory "$W/colo.batching.yaml" --setup batching --out "$RES/memory-batching.json"
  bench batching http://127.0.0.1:9310
fi
down "$W/colo.batching.yaml"

# --- 7. capacity and advice -----------------------------------------------------------------------------------
colo capacity llama-3.1-8b-q4_k --config "$W/colo.yaml" --gpu "$GPU_NAME" --json > "$RES/capacity.json" \
  && say "GPU-RESULT step=capacity $(tr -d '\n ' < "$RES/capacity.json" | head -c 400)"
[ -f "$RES/bench/bench.json" ] && colo advise "$W/colo.yaml" --bench "$RES/bench/bench.json" --json > "$RES/advise.json"
cp "$RES/bench/bench.json" "$RES/bench.json" 2>/dev/null || true
exit 0
