"""Benchmark: DiM's float32 RMSNorm (dimstudy.models.layers.RMSNorm) against plain nn.RMSNorm in a bf16
autocast training step, where nn.RMSNorm gets bf16 inputs with float32 weights and leaves PyTorch's fused
kernel for a chain of elementwise ones.

    python experiments/bench_norm.py --out results/norm-bench     # one GPU; prints ms/step, appends rows

Both variants run in one process on one model, alternating rounds, so the machine's drift hits both alike.
Default size is the gpu-small preset's network (13 blocks x 256, 32 px, batch 128).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from dimstudy.bench.speed import build_step, prepare
from dimstudy.models.layers import RMSNorm
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.results import append_row, environment


def time_steps(step, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dim_s_2")
    ap.add_argument("--depth", type=int, default=13)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=25, help="timed steps per round")
    ap.add_argument("--out", default="results/norm-bench")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"depth": args.depth, "dim": args.dim}
    net, x, t, y = prepare(args.model, args.resolution, args.batch, "bf16", "train", device, overrides)
    step = build_step(net, x, t, y, device, "bf16", "train", cuda_graphs=False)
    ours = RMSNorm.forward
    variants = {"float32 RMSNorm (dimstudy)": ours, "nn.RMSNorm (bf16 input, fp32 weight)": nn.RMSNorm.forward}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fwd in variants.values():  # warm-up both paths
        RMSNorm.forward = fwd
        time_steps(step, 10, device)
    for _ in range(args.rounds):
        for name, fwd in variants.items():
            RMSNorm.forward = fwd
            times[name].append(time_steps(step, args.steps, device))
    RMSNorm.forward = ours

    env, kernels = environment(device), kernels_that_ran(net)
    base = statistics.median(times["nn.RMSNorm (bf16 input, fp32 weight)"])
    for name, ms in times.items():
        med = statistics.median(ms)
        row = {"variant": name, "model": args.model, **overrides, "resolution": args.resolution, "batch": args.batch,
               "mode": "train", "dtype": "bf16-autocast", "seed": 0, "rounds": args.rounds, "steps_per_round": args.steps,
               "ms_per_step": med, "ms_rounds": ms, "speedup_vs_nn": base / med,
               "scan_backend": kernels["scan_backend"], **env}
        append_row("norm_bench", row, args.out)
        print(f"{name:40s} {med:8.2f} ms/step (rounds: {', '.join(f'{v:.2f}' for v in ms)})  x{base / med:.3f}")
    print(f"{env['gpu'] or env['cpu']}, torch {env['torch']}, scan {kernels['scan_backend']}; rows: {Path(args.out) / 'norm_bench.jsonl'}")


if __name__ == "__main__":
    main()
