#!/usr/bin/env bash
# Issue #15 on an 8-GPU machine (`nvidia-h200-x8`), in calls of at most 10 minutes within one 30-minute hold.
# Each device call starts with `bash .gpuwheels/install.sh && export PYTHONPATH=/tmp/site:$PWD &&`, then one of:
#
#   bash experiments/eight-gpus.sh scaling       # ~4 min: dim_s_2 img/s on 1, 2, 4, 8 GPUs, DDP vs independent
#   bash experiments/eight-gpus.sh start         # the study, detached (setsid): 8 workers, one per GPU
#   bash experiments/eight-gpus.sh wait [SECS]   # poll `dimstudy status` until done or SECS (default 540) pass
#   bash experiments/eight-gpus.sh collect       # rows, report, logs -> $OUT (commit them under results/)
#
# A study interrupted when the hold ends loses no finished trial: the rows are in $RESULTS/$STUDY/runs.jsonl
# (bring them back with `collect` before the hold ends), and the next slot re-runs only the missing cells.
# Settings are env variables: GPUS, STEPS (overrides the preset's), NPROC (GPUs per trial, 1 unless the scaling
# call found DDP faster), STUDY, RESULTS, RUNS.
set -euo pipefail

PY=${PYTHON:-python3}
GPUS=${GPUS:-8}
STUDY=${STUDY:-eight-gpus}
PRESET=${PRESET:-eight-gpus}
RESULTS=${RESULTS:-results}
RUNS=${RUNS:-/tmp/runs}
NPROC=${NPROC:-1}
WORKERS=$(( GPUS / NPROC ))
OUT=${OUT:-/tmp/out}
extra=()
[ -n "${STEPS:-}" ] && extra+=(--steps "$STEPS")
common=(--preset "$PRESET" --study "$STUDY" --seeds 0,1,2 --results "$RESULTS" --runs "$RUNS" ${extra[@]+"${extra[@]}"})
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

case "${1:-}" in
  scaling)
    counts=$(seq -s, 1 "$GPUS" | awk -F, '{for (i = 1; i <= NF; i *= 2) s = s (s ? "," : "") i; print s}')
    stamp "scaling on $counts GPUs"
    $PY experiments/ddp_scaling.py --gpus "$counts" --model dim_s_2 --dataset photos --batch-per-rank 128 \
      --steps 60 --set 'precision="bf16"' --runs "$RUNS/scaling" --out "$OUT" --quiet
    ;;
  start)
    mkdir -p "$OUT"
    stamp "enqueue Tab. 4, then Tab. 6 + zigzag with $WORKERS workers x $NPROC GPUs, detached"
    $PY -m dimstudy ablate "${common[@]}" --drop each --workers 0
    setsid nohup $PY -m dimstudy scan-study "${common[@]}" --patterns 1234,12,1,5678 --workers "$WORKERS" \
      --nproc "$NPROC" > "$RUNS/$STUDY.log" 2>&1 < /dev/null &
    stamp "started (log: $RUNS/$STUDY.log)"
    ;;
  wait)
    limit=${2:-540}
    t0=$(date +%s)
    while pgrep -f "dimstudy scan-study" > /dev/null && [ $(( $(date +%s) - t0 )) -lt "$limit" ]; do
      sleep 30
      $PY -m dimstudy status --study "$STUDY" --results "$RESULTS" | tail -3
    done
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
    ;;
  collect)
    mkdir -p "$OUT"
    $PY -m dimstudy report --study "$STUDY" --results "$RESULTS" || true
    tar czf "$OUT/$STUDY.tgz" --exclude='*.db' -C "$RESULTS" "$STUDY"
    cp "$RUNS/$STUDY.log" "$OUT/" 2>/dev/null || true
    $PY -m dimstudy status --study "$STUDY" --results "$RESULTS"
    ;;
  *)
    echo "usage: bash experiments/eight-gpus.sh scaling|start|wait [SECS]|collect" >&2
    exit 2
    ;;
esac
