"""Benchmark: samples/s of the FID phase, eager against CUDA graphs (dimstudy.diffusion.graphs).

    python experiments/bench_sampling.py --out results/sampling-bench     # one GPU; prints, appends rows

For each network (the gpu-photos study's 13 x 256 DiM, and DiM-S/2) and batch size it draws `--n` images
with DPM-Solver (25 steps, the study's setting) both ways from the same seed, in alternating rounds so the
machine's drift hits both alike, and reports the median images/s of the rounds and the largest difference
between the two sets of images. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dimstudy.diffusion import build_schedule
from dimstudy.diffusion.sampling import draw_samples
from dimstudy.models.registry import create_model
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.results import append_row, environment

# --networks name: (row label, model, model kwargs)
NETWORKS = {"study": ("study (13 x 256)", "dim_s_2", {"depth": 13, "dim": 256}), "dim_s_2": ("dim_s_2", "dim_s_2", {})}


def images_per_s(model, n: int, batch: int, steps: int, graphs: bool) -> tuple[float, torch.Tensor]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    x = draw_samples(model, build_schedule("vpsde"), n, sampler="dpm_solver", steps=steps, batch_size=batch,
                     seed=0, device="cuda", cuda_graphs=graphs)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), x


def main() -> None:
    from dimstudy.diffusion.graphs import CudaGraphDenoiser

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="500,64", help="sampling batch sizes, comma-separated")
    ap.add_argument("--n", type=int, default=1000, help="images per measurement")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--networks", default=",".join(NETWORKS), help="which networks, comma-separated: " + ", ".join(NETWORKS))
    ap.add_argument("--out", default=None, help="results directory for the rows (sampling.jsonl)")
    args = ap.parse_args()
    chosen = [n.strip() for n in args.networks.split(",")]
    unknown = [n for n in chosen if n not in NETWORKS]
    if unknown:
        ap.error(f"unknown network {unknown[0]!r}; choose from: {', '.join(NETWORKS)}")
    for key in chosen:
        label, name, kw = NETWORKS[key]
        torch.manual_seed(0)
        model = create_model(name, **kw).cuda().eval()
        for batch in (int(b) for b in args.batch.split(",")):
            graphed = CudaGraphDenoiser(model)  # captured in the first round, replayed after
            speeds = {False: [], True: []}
            for _ in range(args.rounds + 1):  # the first round pays for kernel loads and the capture: dropped
                eager_speed, eager = images_per_s(model, args.n, batch, args.steps, False)
                graph_speed, replayed = images_per_s(graphed, args.n, batch, args.steps, True)
                speeds[False].append(eager_speed)
                speeds[True].append(graph_speed)
            diff = (eager - replayed).abs().max().item()
            row = {"network": label, "model": name, **kw, "batch": batch, "n": args.n, "steps": args.steps,
                   "eager_images_per_s": statistics.median(speeds[False][1:]),
                   "graphed_images_per_s": statistics.median(speeds[True][1:]), "max_abs_diff": diff,
                   **kernels_that_ran(model), **environment("cuda")}
            print(f"{label:18s} batch {batch:4d}: eager {row['eager_images_per_s']:8.1f} img/s, CUDA graphs "
                  f"{row['graphed_images_per_s']:8.1f} img/s (x{row['graphed_images_per_s'] / row['eager_images_per_s']:.2f}); "
                  f"max |diff| {diff:.2e}")
            if args.out:
                append_row("sampling", row, args.out)


if __name__ == "__main__":
    main()
