#!/usr/bin/env bash
# colo's built-in agent against infinity-emb 0.0.78 on /v1/embeddings: the same random-weight MiniLM-L6 folder
# (local WordPiece tokenizer, nothing downloaded), float16, one process each, no MPS, the same requests from
# `python -m colo.bench.loads.embeddings` at 1, 4 and 16 clients: texts of 16 tokens (1 per request) and of
# 128 tokens (8 per request). Prints a side-by-side table and colo's per-phase times.
#
#   scripts/bench_embeddings.sh       env: OUT (./embeddings-bench-out), PYTHON (python3), WINDOW (10 s),
#                                     CLIENTS (1,4,16), DEVICE (cuda), TINY (0), SKIP_INFINITY (0),
#                                     SERVE_ARGS (more arguments for colo's agent, e.g. "--prepare-threads 8")
#
# On the lent GPU (no network): wheels colo needs in .whl/ (../shared/tools/device-wheels.sh); infinity-emb's in
# .whl-infinity/ (~19 MB, cp312: infinity-emb 0.0.78, transformers 4.57, tokenizers 0.22, huggingface_hub 0.36,
# sentence-transformers 3.4, orjson, httptools, uvicorn 0.32, typer 0.12, click 8.1, rich 13, requests, ...) and
# .whl-infinity-sci/ (~45 MB: scipy, scikit-learn, joblib, threadpoolctl, cloudpickle, narwhals — sentence-
# transformers imports them at start). Both together pass the 64 MiB a device call carries, so carry them in
# two calls: every dir present is installed into .site-infinity/ (ignored; kept while the machine stays warm),
# which goes FIRST on infinity's PYTHONPATH only: infinity runs on transformers 4.57, colo on the machine's own.
# A CPU dry run of the plumbing: DEVICE=cpu TINY=1 WINDOW=1 CLIENTS=1 SKIP_INFINITY=1 scripts/bench_embeddings.sh
#
# Writes $OUT: points.jsonl (one line per server × point), table.md, colo_metrics.txt, colo.log, infinity.log,
# bench.log. Both servers are stopped on exit, also on failure or SIGTERM (trap).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/embeddings-bench-out}"
PY="${PYTHON:-python3}"
WINDOW="${WINDOW:-10}"
CLIENTS="${CLIENTS:-1,4,16}"
DEVICE="${DEVICE:-cuda}"
TINY="${TINY:-0}"
SKIP_INFINITY="${SKIP_INFINITY:-0}"
SERVE_ARGS="${SERVE_ARGS:-}"
COLO_PORT="${COLO_PORT:-9311}"
INF_PORT="${INF_PORT:-9312}"
mkdir -p "$OUT"
: >"$OUT/points.jsonl"
LOG="$OUT/bench.log"
MODEL_DIR="$OUT/minilm-random"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false INFINITY_ANONYMOUS_USAGE_STATS=0
export DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
PIDS=()

log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
cleanup() {
  trap - EXIT TERM INT
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  log "servers stopped"
}
trap cleanup EXIT TERM INT

# colo's side: the machine's packages, colo's wheels (.whl) and this tree.
COLO_PATH="$ROOT/src"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || log "WARNING: installing .whl failed (see $LOG)"
  COLO_PATH="$ROOT/src:/tmp/site"
fi
# infinity's side: its wheels first.
INF_SITE="$ROOT/.site-infinity"
if [ "$SKIP_INFINITY" != 1 ]; then
  for dir in .whl-infinity .whl-infinity-sci; do
    if ls "$dir"/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$INF_SITE" \
        "$dir"/*.whl >>"$LOG" 2>&1 || log "WARNING: installing $dir failed (see $LOG)"
    fi
  done
  INF_PATH="$INF_SITE:$COLO_PATH"
  if ! PYTHONPATH="$INF_PATH" "$PY" -c "import infinity_emb, sentence_transformers" >>"$LOG" 2>&1; then
    log "infinity-emb cannot be imported here (no .whl-infinity? scipy/scikit-learn missing? see $LOG): colo alone"
    SKIP_INFINITY=1
  fi
fi

log "writing the random-weight model to $MODEL_DIR (tiny: $TINY)"
BUILD_PATH="$COLO_PATH"
[ "$SKIP_INFINITY" != 1 ] && BUILD_PATH="$INF_PATH"  # saved by the older transformers: both can read it
PYTHONPATH="$BUILD_PATH" "$PY" -m colo.bench.loads.embeddings_model "$MODEL_DIR" $([ "$TINY" = 1 ] && echo --tiny) \
  >>"$LOG" 2>&1 || { log "FAILED to write the model (see $LOG)"; exit 1; }

DTYPE=float16
[ "$DEVICE" = cpu ] && DTYPE=float32
cat >"$OUT/colo.yaml" <<YAML
version: 1
gpus: [{name: any, memory: 80GiB}]
models:
  minilm: {path: "$MODEL_DIR", memory: 2GiB, batch_size: 64, max_seq_len: 256}
agents:
  embedder: {models: [minilm], port: $COLO_PORT}
YAML

log "starting colo's agent on :$COLO_PORT ($DEVICE, $DTYPE${SERVE_ARGS:+, $SERVE_ARGS})"
# shellcheck disable=SC2086  # SERVE_ARGS is split into arguments on purpose
PYTHONPATH="$COLO_PATH" "$PY" -m colo.modelserver.serve --agent embedder --config "$OUT/colo.yaml" \
  --device "$DEVICE" --dtype "$DTYPE" $SERVE_ARGS >"$OUT/colo.log" 2>&1 &
PIDS+=($!)
if [ "$SKIP_INFINITY" != 1 ]; then
  log "starting infinity-emb on :$INF_PORT"
  PYTHONPATH="$INF_PATH" "$PY" -c "from infinity_emb.cli import cli; cli()" v2 --model-id "$MODEL_DIR" \
    --served-model-name minilm --port "$INF_PORT" --url-prefix /v1 --engine torch --device "$DEVICE" \
    --dtype "$DTYPE" --batch-size 64 --no-bettertransformer >"$OUT/infinity.log" 2>&1 &
  PIDS+=($!)
fi

wait_up() {  # URL SECONDS
  for _ in $(seq $(($2 * 2))); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}
wait_up "http://127.0.0.1:$COLO_PORT/health" 300 || { log "colo's agent never became healthy"; tail -20 "$OUT/colo.log"; exit 1; }
URLS=(--url "http://127.0.0.1:$COLO_PORT" --label colo)
if [ "$SKIP_INFINITY" != 1 ]; then
  if wait_up "http://127.0.0.1:$INF_PORT/health" 300; then
    URLS+=(--url "http://127.0.0.1:$INF_PORT/v1" --label infinity-emb)
  else
    log "infinity-emb never became healthy (last lines below); colo alone"; tail -20 "$OUT/infinity.log" | tee -a "$LOG"
  fi
fi

STATUS=0
for shape in "16 1" "128 8"; do
  set -- $shape
  log "point: $1 tokens × $2 texts per request, clients $CLIENTS, $WINDOW s each"
  PYTHONPATH="$COLO_PATH" "$PY" -m colo.bench.loads.embeddings "${URLS[@]}" --model minilm --clients "$CLIENTS" \
    --tokens "$1" --texts "$2" --window "$WINDOW" --warmup 2 >>"$OUT/points.jsonl" 2>>"$LOG" || STATUS=1
done
curl -fsS "http://127.0.0.1:$COLO_PORT/metrics" >"$OUT/colo_metrics.txt" 2>>"$LOG"
PYTHONPATH="$COLO_PATH" "$PY" - "$OUT" <<'PYEOF' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

from colo.bench.loads.embeddings import table_from_dicts
from colo.modelserver.metrics import phase_means_ms

out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines() if line.strip()]
print("\n".join(table_from_dicts(rows)))
print()
print("colo's agent, mean ms per request and phase:",
      ", ".join(f"{k} {v:.3f}" for k, v in phase_means_ms((out / "colo_metrics.txt").read_text()).items()))
PYEOF
log "done (status $STATUS); results in $OUT"
exit $STATUS
