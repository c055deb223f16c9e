#!/usr/bin/env bash
# Issue 22 on one GPU in one device call (about 5 minutes): the built-in agent's HTTP path against what the GPU
# gives the same models in-process, and against infinity-emb.
#
#   scripts/gpu_http_bench.sh      env: OUT, WINDOW (10 s), SKIP_EMB (0), HTTP_SECS (240), EMB_SECS (200), VARIANTS
#
# (1) `colo bench forwards examples/newsroom/colo.sized.yaml --mode mps`: every agent's models as bare forwards,
#     one process per agent, 8 × 128 (the in-process harness);
# (2) `colo bench agents` on the same config, MPS, 1 and 16 clients per agent, 8 × 128 per request, then each
#     agent alone (`--lone`: one row of 16 tokens per request); VARIANTS="NAME:VAR=VALUE[,VAR=VALUE] ...": (2b)
#     the same at VARIANT_CLIENTS (16) clients again per variant, the agents run with those variables (e.g.
#     "spin:COLO_CUDA_WAIT=spin eager:COLO_CUDA_GRAPHS=off"), judged the same way, side by side in one run;
# (3) scripts/agents_targets.py --inprocess judges: HTTP at 16 clients >= 60 % of (1), lone p50 <= 1.5 ms on the
#     bert-tiny agents, errors, peaks <= limits;
# (4) scripts/bench_embeddings.sh: colo's agent against infinity-emb on /v1/embeddings (SKIP_EMB=1: not run;
#     infinity's wheels: see that script).
# Writes under $WORK (out/gpu-http-bench) and, when $OUT is set, http-bench.log and gpu-http-bench.tar.gz there.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/gpu_run.sh
gpu_run_preamble COLO_HTTP_TEED http-bench.log out/gpu-http-bench "$@"
WINDOW=${WINDOW:-10}
CONFIG=examples/newsroom/colo.sized.yaml
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COLO=(python3 -c 'import sys; sys.argv[0] = "colo"; from colo.cli.entry import main; main()')
echo "== GPU HTTP bench $(date -u '+%Y-%m-%d %H:%M UTC'); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)"
rc=0
echo "== (1) in-process: colo bench forwards (MPS)"
timeout -s TERM -k 20 "${FWD_SECS:-120}" "${COLO[@]}" bench forwards "$CONFIG" --mode mps --duration "$WINDOW" \
  --out "$WORK/forwards" >"$WORK/forwards.log" 2>&1 || rc=1
tail -25 "$WORK/forwards.log"
echo "== (2) HTTP: colo bench agents (MPS, 1 and 16 clients, lone)"
timeout -s TERM -k 20 "${HTTP_SECS:-240}" "${COLO[@]}" bench agents "$CONFIG" --mode mps --clients 1,16 --batch 8 \
  --seq-len 128 --duration "$WINDOW" --warmup 2 --lone 5 --start-timeout 120 --out "$WORK/agents" \
  >"$WORK/agents.log" 2>&1 || rc=1
tail -40 "$WORK/agents.log"
for variant in ${VARIANTS:-}; do  # NAME:VAR=VALUE[,VAR=VALUE]: the agents bench again, side by side, one run
  name=${variant%%:*} assigns=${variant#*:}
  echo "== (2b) HTTP: colo bench agents again, $name (${assigns//,/ }), ${VARIANT_CLIENTS:-16} clients"
  env ${assigns//,/ } timeout -s TERM -k 20 "${HTTP_SECS:-240}" "${COLO[@]}" bench agents "$CONFIG" --mode mps \
    --clients "${VARIANT_CLIENTS:-16}" --batch 8 --seq-len 128 --duration "$WINDOW" --warmup 2 --start-timeout 120 \
    --out "$WORK/agents-$name" >"$WORK/agents-$name.log" 2>&1 || rc=1
  tail -14 "$WORK/agents-$name.log"
  if [ -f "$WORK/agents-$name/agents.json" ] && [ -f "$WORK/forwards/bench.json" ]; then
    python3 scripts/agents_targets.py "$WORK/agents-$name/agents.json" --config "$CONFIG" \
      --clients "${VARIANT_CLIENTS:-16}" --inprocess "$WORK/forwards/bench.json" | grep -E "60%|load generator" || true
  fi
done
echo "== (3) targets"
if [ -f "$WORK/agents/agents.json" ] && [ -f "$WORK/forwards/bench.json" ]; then
  python3 scripts/agents_targets.py "$WORK/agents/agents.json" --config "$CONFIG" --clients 16 \
    --inprocess "$WORK/forwards/bench.json" --summary "$WORK/summary.json" || rc=1
else
  echo "GPU-RESULT no results: forwards or agents wrote no JSON"; rc=1
fi
if [ "${SKIP_EMB:-0}" != 1 ]; then
  echo "== (4) colo against infinity-emb (scripts/bench_embeddings.sh)"
  OUT="$WORK/embeddings" WINDOW="${EMB_WINDOW:-6}" timeout -s TERM -k 20 "${EMB_SECS:-200}" \
    scripts/bench_embeddings.sh >"$WORK/embeddings.log" 2>&1 || rc=1
  tail -30 "$WORK/embeddings.log"
fi
echo "http bench: wall $(( $(date +%s) - start )) s, exit $rc"
[ -n "${OUT:-}" ] && tar czf "$OUT/gpu-http-bench.tar.gz" -C "$WORK" . 2>/dev/null
exit $rc
