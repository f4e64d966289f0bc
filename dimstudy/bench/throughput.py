"""Training and sampling throughput of a model at its native size (issue: dim_s_2 vs uvit_s_2 at 32x32).

    python -m dimstudy.bench.throughput --models dim_s_2,uvit_s_2 --batch 128 --results results/throughput

Training: one optimiser step = forward + ε-MSE loss + backward + AdamW, bf16 autocast on CUDA (the
trainer's setting), fp32 on CPU. Sampling: one DPM-Solver step = one network evaluation of the batch
(no CFG), so images/s for an N-step sampler is `sample_nfe_per_s * batch / N`. Both are timed with the
shared protocol (`dimstudy.bench.timing.time_fn`: warm-up, events, median) in this process, and each
model in its own worker process. One row per model goes to the results table `throughput`.
"""

from __future__ import annotations

import argparse
import json

import torch

from dimstudy.bench.timing import run_isolated, time_fn
from dimstudy.diffusion import build_schedule
from dimstudy.flops import count_params
from dimstudy.models.registry import create_model
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.results import append_row, environment
from dimstudy.runtime import resolve_device


def measure(model_name: str, batch: int, device: str = "auto", warmup: int = 5, repeats: int = 20, seed: int = 0,
            sampler_steps: int = 50, scan_backend: str | None = None, compile: bool = False) -> dict:
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = create_model(model_name, scan_backend=scan_backend).to(dev)
    net = torch.compile(model) if compile else model  # same weights; `model` keeps the mixers' last_backend
    schedule = build_schedule("vpsde")
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    x0 = torch.randn(batch, model.in_chans, model.img_size, model.img_size, device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev) if model.num_classes else None
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.03, betas=(0.99, 0.999))

    def train_step():
        with torch.autocast(**amp):
            loss = schedule.training_loss(net, x0, y).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train = time_fn(train_step, dev, warmup=warmup, repeats=repeats, budget_s=15)
    model.eval()
    t = torch.full((batch,), 500.0, device=dev)

    @torch.no_grad()
    def nfe():
        with torch.autocast(**amp):
            net(x0, t, y)

    fwd = time_fn(nfe, dev, warmup=warmup, repeats=repeats, budget_s=10)
    return {
        "model": model_name, "batch": batch, "resolution": model.img_size, "params": count_params(model),
        "compiled": compile,
        "precision": "bf16-autocast" if dev.type == "cuda" else "fp32", "seed": seed,
        "train_ms_per_step": train.median_ms, "train_ms_iqr": train.iqr_ms, "train_images_per_s": batch * 1e3 / train.median_ms,
        "sample_ms_per_nfe": fwd.median_ms, "sample_ms_iqr": fwd.iqr_ms, "sample_nfe_per_s": 1e3 / fwd.median_ms,
        "sample_images_per_s_dpm50": batch * 1e3 / (fwd.median_ms * sampler_steps),
        "sample_images_per_s_em1000": batch * 1e3 / (fwd.median_ms * 1000),
        "scan_backend": kernels_that_ran(model)["scan_backend"] or "none", "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        **environment(dev),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dim_s_2,uvit_s_2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--results", default="results/throughput")
    p.add_argument("--scan-backends", default="auto", help="comma list, one run each for Mamba models: auto,triton,cuda,torch")
    p.add_argument("--compile", action="store_true", help="also time each under torch.compile")
    a = p.parse_args(argv)
    for name in a.models.split(","):
        backends = a.scan_backends.split(",") if not name.startswith("uvit") else ["auto"]
        for backend in backends:
            for compiled in (False, True) if a.compile else (False,):
                kw = dict(model_name=name, batch=a.batch, device=a.device, compile=compiled,
                          scan_backend=None if backend == "auto" else backend)
                row = {"model": name, "batch": a.batch} | run_isolated("dimstudy.bench.throughput:measure", kw, timeout_s=900)
                append_row("throughput", row, a.results)
                print(json.dumps({k: row.get(k) for k in ("model", "status", "compiled", "train_images_per_s",
                                                            "sample_nfe_per_s", "sample_images_per_s_dpm50",
                                                            "scan_backend", "gpu")}), flush=True)


if __name__ == "__main__":
    main()
