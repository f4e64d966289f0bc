#!/usr/bin/env bash
# The one-GPU program behind results/gpu-small/ and results/resolution/: paper Tab. 4 (all five rows) and
# Tab. 6 (scan patterns 1234, 12, 1) with two seeds, their report, then the resolution study (direct
# sampling vs upsample guidance vs a short weak-to-strong fine-tune) on the full DiM of the first seed.
#
#   bash experiments/gpu-small.sh                       # defaults below; every setting is an env variable
#   WORKERS=6 RES_SCALES="2 3" bash experiments/gpu-small.sh
#
# On one H200 (2026-11-26, results/gpu-small/) the study took 19.3 min with 12 workers (12 trials side by side,
# ~1.05 steps/s each; 133 of 140 GiB of GPU memory in use while they sampled: WORKERS=6 on an 80 GB card) and the x2 resolution
# study 4.5 min (1000 samples per method at 64 px, a 500-step fine-tune).
#
# Re-running continues: finished trials are kept (Optuna storage under $RESULTS/$STUDY/), an interrupted
# training resumes from its run directory, and a finished resolution study is skipped.
set -euo pipefail

PY=${PYTHON:-python3}
PRESET=${PRESET:-gpu-small}
STUDY=${STUDY:-gpu-small}
RESULTS=${RESULTS:-results}
RUNS=${RUNS:-runs}
WORKERS=${WORKERS:-12}         # trials at once on the one GPU (12 side by side: 12.6 steps/s in all; 1 alone: ~11.5)
SEEDS=${SEEDS:-0,1}
RES_SCALES=${RES_SCALES:-2}    # upscaling factors m of the resolution study ("2 3" for both)
RES_N=${RES_N:-1000}           # samples per method
RES_REF=${RES_REF:-1797}       # reference images at the high resolution (all the digits)
RES_FT_STEPS=${RES_FT_STEPS:-500}
RES_STEPS=${RES_STEPS:-25}     # DPM-Solver steps, as in the study's own FID
RES_BATCH=${RES_BATCH:-250}
read -r -a extra <<< "${STUDY_ARGS:-}"  # more study flags, e.g. STUDY_ARGS="--steps 500"

common=(--preset "$PRESET" --study "$STUDY" --seeds "$SEEDS" --results "$RESULTS" --runs "$RUNS" ${extra[@]+"${extra[@]}"})
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

stamp "Tab. 4 grid: enqueue only"
$PY -m dimstudy ablate "${common[@]}" --drop each --workers 0
stamp "Tab. 6 grid: enqueue, then $WORKERS workers run every trial of both grids and write the report"
$PY -m dimstudy scan-study "${common[@]}" --patterns 1234,12,1 --workers "$WORKERS"

source_run="$RUNS/$STUDY/scan1234-lsc1-pt1-lfe1-seed${SEEDS%%,*}"
for m in $RES_SCALES; do
  out="$RUNS/resolution/$STUDY-x$m"
  if [ -f "$out/done" ]; then stamp "resolution study x$m: done before"; continue; fi
  stamp "resolution study x$m from $source_run"
  $PY -m dimstudy resolution-study --from "$source_run" --scale "$m" --n "$RES_N" --num-reference "$RES_REF" \
    --ft-steps "$RES_FT_STEPS" --steps "$RES_STEPS" --batch-size "$RES_BATCH" --out "$out" \
    --results "$RESULTS" --no-progress
  touch "$out/done"
done

stamp "report"
$PY -m dimstudy report --study "$STUDY" --results "$RESULTS"
stamp "all done"
