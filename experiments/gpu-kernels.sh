#!/usr/bin/env bash
# One GPU slot (570 s of limits) for the kernel work (issue 11), most important first, each step under its own time limit so a
# slow one cannot starve the rest; logs and result rows go under $OUT (default gpu-kernels-out/).
#
#   DIMSTUDY_GIT_SHA=$(git rev-parse HEAD) bash experiments/gpu-kernels.sh      # on the GPU machine, repo root
#
# 1. the GPU tests of the Triton kernels and of mamba-ssm's kernel through dimstudy's custom ops
#    (tests/gpu/test_gpu_triton.py, test_gpu_kernels.py);
# 2. the training-shape scan with the backward's untimed variants: register caps and stored decays at the
#    chunks they want (experiments/bench_scan.py --maxnreg, --bwd-variants);
# 3. the DiM-H/2 forwards under a register cap;
# 4. where an eager DiM-H/2 forward's time goes on the Triton kernels (dimstudy profile), 1024 px, batch 1;
# 5. DiM-H/2 and U-ViT compiled block by block (--compile-scope blocks): compile time (first_call_s) and ms,
#    against the whole-model compile in results/speed-triton-compiled/ (~100 s a shape, 28.9 / 22.0 ms);
# 6. mamba_s_2's training throughput, whose only row lacked its commit and was taken out of results/throughput/.
# Rows carry GPU, versions and DIMSTUDY_GIT_SHA (the GPU machine's copy of the tree has no .git).
set -uo pipefail  # no -e: a failed step is logged and the next one still runs

PY=${PYTHON:-python3}
OUT=${OUT:-gpu-kernels-out}
mkdir -p "$OUT"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }
step() {  # step SECONDS NAME COMMAND...: run it with a time limit, output to $OUT/NAME.log
    local limit=$1 name=$2
    shift 2
    stamp "$name (limit ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    stamp "$name: exit $?"
}

step 120 gpu-tests "$PY" -m pytest -q -m gpu -rs tests/gpu/test_gpu_triton.py tests/gpu/test_gpu_kernels.py
step 120 scan-train "$PY" experiments/bench_scan.py --shapes dim_s_2-32px-train-b128 --modes fwd+bwd \
    --maxnreg 128,168 --bwd-variants 8,8:decay,16:decay --out "$OUT/scan-bench"
step 80 scan-fwd "$PY" experiments/bench_scan.py --shapes dim_h_2-1024px-b1,dim_h_2-1024px-b8 --modes fwd \
    --maxnreg 128,168 --out "$OUT/scan-bench"
step 90 profile-b1 "$PY" -m dimstudy profile --model dim --resolution 1024 --batch 1 --scan-backend triton \
    --results "$OUT/profile"
step 120 speed-blocks "$PY" -m dimstudy speed --models dim,uvit --resolutions 1024 --batch 1 --scan-backend triton \
    --compile --compile-scope blocks --cuda-graphs --warmup 3 --repeats 10 --budget 1.5 --timeout 100 \
    --results "$OUT/speed-blocks"
step 40 throughput-mamba "$PY" -m dimstudy.bench.throughput --models mamba_s_2 --batch 128 --scan-backends triton \
    --results "$OUT/throughput"
stamp "done"
