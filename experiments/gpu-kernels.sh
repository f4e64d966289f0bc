#!/usr/bin/env bash
# Issue 11's checks and benchmarks in one GPU slot (570 s of limits), most important first, each step under its
# own time limit so a slow one cannot starve the rest:
#
#   DIMSTUDY_GIT_SHA=$(git rev-parse HEAD) bash experiments/gpu-kernels.sh      # on the GPU machine, repo root
#
# 1. every GPU test (tests/gpu: the Triton kernels against mamba-ssm, whole networks across backends, the custom
#    ops' fakes against their real outputs, compiled blocks against eager, CUDA graphs);
# 2. the scan against mamba-ssm's at the three shapes of issue 11, default configs (experiments/bench_scan.py);
# 3. Fig. 3 at 1280 px (the paper's crossover), batch 1 and 8, compiled block by block, replayed from CUDA graphs;
# 4. dim_s_2's training throughput, eager and under torch.compile (the compile takes ~2 minutes).
# (The profile of DiM-H/2 on these kernels, results/profile-triton/, is one more minute:
#  python3 -m dimstudy profile --model dim --resolution 1024 --batch 1 --scan-backend triton --results DIR)
# Rows carry GPU, versions and DIMSTUDY_GIT_SHA (the GPU machine's copy of the tree has no .git). Everything is
# written under $WORK and packed into $OUT/gpu-kernels.tgz at the end, with steps.log beside it: the device
# tool returns at most 8 files a call, and a run leaves more (each table's .jsonl, .lock, summaries, plots).
set -uo pipefail  # no -e: a failed step is logged and the next one still runs

PY=${PYTHON:-python3}
OUT=${OUT:-gpu-kernels-out}
WORK=${WORK:-/tmp/gpu-kernels}
mkdir -p "$OUT" "$WORK"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$WORK/steps.log"; }
step() {  # step SECONDS NAME COMMAND...: run it with a time limit, output to $WORK/NAME.log
    local limit=$1 name=$2
    shift 2
    stamp "$name (limit ${limit}s)"
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
    stamp "$name: exit $?"
}

step 120 gpu-tests "$PY" -m pytest -q -m gpu -rs tests/gpu
step 60 scan-bench "$PY" experiments/bench_scan.py --out "$WORK/scan-bench"
step 170 speed "$PY" -m dimstudy speed --models dim,uvit --resolutions 1280 --batch 1,8 --scan-backend triton \
    --compile --cuda-graphs --warmup 3 --repeats 10 --budget 1.5 --timeout 100 --results "$WORK/speed"
step 220 throughput "$PY" -m dimstudy.bench.throughput --models dim_s_2 --batch 128 --scan-backends triton --compile \
    --results "$WORK/throughput"
stamp "done"
tar czf "$OUT/gpu-kernels.tgz" -C "$WORK" . && cp "$WORK/steps.log" "$OUT/"
