"""Which layout should a multi-GPU study use? Training img/s of one model on 1, 2, 4, ... GPUs (issue #15).

    python experiments/ddp_scaling.py --gpus 1,2,4,8 --out results/multi-gpu      # on an 8-GPU machine
    python experiments/ddp_scaling.py --gpus 1,2 --device cpu --model dim_tiny_2 --dataset digits \
        --resolution 16 --batch-per-rank 4 --steps 3 --out /tmp/scaling                 # the same code paths on CPU

Two layouts, each run here as separate processes, as a study would run them:
- `ddp`: one training on N ranks through torchrun (`torch.distributed.run --nproc_per_node N -m dimstudy train`),
  batch = batch_per_rank x N, NCCL on CUDA, gloo on CPU. Throughput = that run's images/s.
- `independent`: N plain trainings side by side, each pinned to its own GPU (CUDA_VISIBLE_DEVICES), batch
  batch_per_rank each, as N Optuna workers would train N trials. Throughput = the sum of their images/s.
Efficiency is throughput / (N x the 1-GPU throughput of the same layout's first row). One row per (layout, N)
goes to OUT/scaling.jsonl with the environment, the kernels that ran and the git SHA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from dimstudy.results import append_row, environment


def train_cmd(args, out: Path, batch: int) -> list[str]:
    cmd = ["-m", "dimstudy", "train", "--model", args.model, "--dataset", args.dataset,
           "--resolution", str(args.resolution), "--batch-size", str(batch), "--steps", str(args.steps),
           "--warmup-steps", "1", "--out", str(out), "--device", args.device, "--no-progress", "--no-resume",
           "--sample-every", "0", "--keep-every", "0", "--ckpt-every", str(args.steps), "--num-workers", "2"]
    if args.scan_backend:
        cmd += ["--scan-backend", args.scan_backend]
    for kv in args.set or []:
        cmd += ["--set", kv]
    return cmd


def run_ddp(args, n: int) -> dict:
    out = Path(args.runs) / f"ddp-{n}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           *train_cmd(args, out, args.batch_per_rank * n)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    s = json.loads((out / "summary.json").read_text())
    return {"images_per_s": s["images_per_s"], "world_size": s["world_size"], "scan_backend": s.get("scan_backend"),
            "final_loss": s["final_loss"]}


def run_independent(args, n: int) -> dict:
    procs, outs = [], []
    for i in range(n):
        out = Path(args.runs) / f"independent-{n}-{i}"
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
        if args.device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        procs.append(subprocess.Popen([sys.executable, *train_cmd(args, out, args.batch_per_rank)], env=env,
                                      stdout=subprocess.DEVNULL if args.quiet else None))
        outs.append(out)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"independent trainings exited with {codes}")
    sums = [json.loads((o / "summary.json").read_text()) for o in outs]
    return {"images_per_s": sum(s["images_per_s"] for s in sums), "world_size": 1,
            "scan_backend": sums[0].get("scan_backend"), "final_loss": sums[0]["final_loss"]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="1,2,4,8", help="process counts to time, comma list")
    ap.add_argument("--layouts", default="ddp,independent")
    ap.add_argument("--model", default="dim_s_2")
    ap.add_argument("--dataset", default="photos")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch-per-rank", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60, help="steps per run; the first is left out of the rate")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scan-backend", default=None)
    ap.add_argument("--set", action="append", help="more TrainConfig fields, KEY=VALUE (e.g. precision=\"bf16\")")
    ap.add_argument("--runs", default="runs/scaling")
    ap.add_argument("--out", default="results/multi-gpu")
    ap.add_argument("--quiet", action="store_true", help="hide the trainings' own output")
    args = ap.parse_args(argv)
    rows, base = [], {}
    for layout in args.layouts.split(","):
        if layout not in ("ddp", "independent"):
            raise SystemExit(f"unknown layout {layout!r}; valid choices: ddp, independent")
        for n in (int(v) for v in args.gpus.split(",")):
            got = (run_ddp if layout == "ddp" else run_independent)(args, n)
            base.setdefault(layout, got["images_per_s"] / n)
            row = {"layout": layout, "processes": n, "model": args.model, "dataset": args.dataset,
                   "resolution": args.resolution, "batch_per_rank": args.batch_per_rank, "steps": args.steps,
                   "seed": 0, **got, "efficiency": got["images_per_s"] / (n * base[layout]),
                   **environment(args.device.split(":")[0])}
            append_row("scaling", row, args.out)
            rows.append(row)
            print(f"{layout:11s} x{n}: {got['images_per_s']:9.1f} img/s, efficiency {row['efficiency']:.2f} "
                  f"({got['scan_backend']})", flush=True)
    return rows


if __name__ == "__main__":
    main()
