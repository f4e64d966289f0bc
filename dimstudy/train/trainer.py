"""Diffusion training: `train(cfg)` runs a TrainConfig to its last step, resuming exactly where a run stopped.

Per optimiser step: the DataLoader delivers this rank's share of the global batch (order fixed by
(seed, epoch), see StepBatchSampler), it is split into `grad_accum` micro-batches, each is flipped at
random, its labels dropped to the null class for CFG, and the schedule's eps-MSE is back-propagated; then
grad clipping (optional), AdamW, the warm-up LR schedule and the EMA update.

Determinism: every random draw of a step (flips, label dropout, t, noise) comes from one generator
re-seeded from (seed, rank, step), so a step's randomness never depends on what ran before it. Data order
depends only on (seed, step). Everything else that carries over between steps (weights, EMA, AdamW
moments, LR schedule, grad scaler, global RNGs) is in the checkpoint. A resumed run therefore repeats an
uninterrupted one exactly (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from dimstudy.checks import check_choice
from dimstudy.data import build_dataset, list_datasets
from dimstudy.diffusion import build_schedule, drop_labels
from dimstudy.diffusion.sampling import draw_samples, save_grid
from dimstudy.diffusion.schedules import SCHEDULES
from dimstudy.flops import build_on_meta
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.results import append_row, environment
from dimstudy.runtime import resolve_device
from dimstudy.train.checkpoint import (
    adapt_state_dict,
    build_model,
    capture_rng,
    fit_model_args,
    read_init_weights,
    read_resumable,
    restore_rng,
)
from dimstudy.train.config import RESUME_MAY_CHANGE, TrainConfig, save_config, standin_model_kwargs
from dimstudy.train.distributed import StepBatchSampler, all_mean, close_distributed, init_distributed
from dimstudy.train.ema import EMA, ema_warning, init_share
from dimstudy.train.files import LATEST, remove_stale_temps, save_checkpoint

LOSS_LOG = "loss.jsonl"
def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. 'auto': bf16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def warmup_factor(warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier for LambdaLR: linear warm-up over `warmup_steps` updates, then 1.

    Update s (0-based) uses lr * min(1, (s + 1) / warmup). U-ViT's min(1, s / warmup) gives the very
    first update lr 0; starting at lr / warmup instead wastes no step and reaches full lr one step sooner.
    """
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """A generator whose stream is a pure function of (seed, rank, step): a step's randomness needs no history."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state))


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of x (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def accumulate_grads(
    net: nn.Module, loss_fn: Callable[..., torch.Tensor], chunks, scaler: torch.amp.GradScaler
) -> torch.Tensor:
    """Back-propagate equal-sized micro-batches so the gradients are those of one batch of their union.

    loss_fn(*chunk) -> per-sample losses (b,). Each chunk's mean is scaled by 1/len(chunks); under DDP
    only the last backward all-reduces (no_sync). Returns the batch-mean loss, detached.
    """
    losses = []
    for i, chunk in enumerate(chunks):
        sync = i == len(chunks) - 1 or not isinstance(net, DDP)
        with contextlib.nullcontext() if sync else net.no_sync():
            loss = loss_fn(*chunk).mean() / len(chunks)
            scaler.scale(loss).backward()
        losses.append(loss.detach().float())
    return torch.stack(losses).sum()


def params_digest(model: nn.Module) -> str:
    """sha256 over the state dict's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the loss-log rows up to `last_step` (a crash may have logged steps after the checkpoint)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a row torn by the crash
                continue
            if row["step"] <= last_step:
                rows.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(rows), encoding="utf-8")
    os.replace(tmp, path)


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    # A field the saved config lacks was added to TrainConfig later: the run used its default.
    saved = {**TrainConfig().to_dict(), **saved}
    diff = [k for k in now if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise ValueError(f"{cfg.out_dir} holds a run with other settings ({changes}); resume with the same "
                         "settings, or pass --no-resume / a new --out")


def check_config(cfg: TrainConfig) -> None:
    """Every name in `cfg` and its model's settings, checked without data or weights, so that a bad value stops
    a run before a dataset is cut, read or downloaded: the dataset and schedule names, and the model, built on
    the meta device (no storage) with the input the dataset would give. Studies check each variant with it
    before they enqueue anything."""
    check_choice("dataset", cfg.dataset, list_datasets())
    check_choice("schedule", cfg.schedule, SCHEDULES)
    build_on_meta(cfg.model, **standin_model_kwargs(cfg))  # unknown model, component flag, scan pattern, ...


def train(
    cfg: TrainConfig,
    *,
    resume: bool | None = None,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train to `cfg.steps` and return a summary (final loss, throughput, checkpoint and log paths).

    resume: continue from out_dir/latest.pt (None: when it exists; False: start over in out_dir).
    on_step(row): called on every rank after each step with {"step", "loss", "lr"} (e.g. sweeps' pruning).
    Under torchrun each rank runs this; only rank 0 writes files.
    """
    check_config(cfg)  # a bad name or model setting fails here, before any data is loaded
    schedule = build_schedule(cfg.schedule)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    info = init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    try:
        out = Path(cfg.out_dir)
        latest = out / LATEST
        resume = latest.exists() if resume is None else resume
        if resume and not latest.exists():
            raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
        if info.is_main:
            for p in remove_stale_temps(out):
                warnings.warn(f"removed {p}, left by a checkpoint writer that was killed mid-write", stacklevel=2)
        # read before the data: a checkpoint that cannot be used stops the run before anything else is touched
        ckpt, source = read_resumable(out, warn=lambda m: warnings.warn(m, stacklevel=3)) if resume else (None, None)
        init = read_init_weights(cfg.init_from) if cfg.init_from and not resume else None
        per_rank = cfg.batch_size // info.world_size
        if cfg.batch_size % info.world_size or per_rank % cfg.grad_accum:
            raise ValueError(f"batch_size {cfg.batch_size} must split into {info.world_size} ranks x "
                             f"{cfg.grad_accum} micro-batches")

        # -- everything random at set-up (model init) comes from the global RNGs, seeded alike on every rank
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        folder = {"skip_unreadable": True} if cfg.skip_unreadable else {}  # checked: only with dataset folder
        ds = build_dataset(cfg.dataset, cfg.resolution, data_dir=cfg.data_dir, train=True, class_labels=cfg.class_cond,
                           **folder)
        num_classes = ds.num_classes if cfg.class_cond else 0
        model_args = {"name": cfg.model, "kwargs": {"img_size": ds.resolution, "in_chans": ds.channels,
                                                     "num_classes": num_classes, **cfg.model_kwargs}}
        if ckpt is not None:  # a run started before issue 13 continues with the network it began with
            model_args = fit_model_args(model_args, ckpt["model"], cfg.schedule, str(source))
        raw = build_model(model_args).to(device)
        if init is not None:  # weights that do not fit are one line naming the keys; the pos-embed is resized
            raw.load_state_dict(adapt_state_dict(init, raw, source=f"init_from {cfg.init_from}"))
            del init
        ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup)  # a copy of the starting weights: a fine-tune's EMA is reset to them
        opt = torch.optim.AdamW(raw.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_factor(cfg.warmup_steps))
        amp_dtype = autocast_dtype(cfg.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

        start = 0
        if info.is_main and not resume and (msg := ema_warning(cfg)):
            warnings.warn(msg, stacklevel=2)
        if ckpt is not None:
            _check_resume_config(ckpt["config"], cfg)
            raw.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            restore_rng(ckpt["rng"])
            start = int(ckpt["step"])
            del ckpt

        net = torch.compile(raw) if cfg.compile else raw
        if info.enabled:
            net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
        net.train()

        loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=StepBatchSampler(len(ds), cfg.batch_size, cfg.seed, start, cfg.steps, info),
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
        )
        log_path = out / LOSS_LOG
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.toml")
            _truncate_log(log_path, start)  # a fresh run starts an empty log

        def checkpoint(step: int) -> None:
            state = {
                "model": raw.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "rng": capture_rng(), "config": cfg.to_dict(), "model_args": model_args,
                "environment": json.loads(json.dumps(environment(device))),  # plain types (torch.__version__ is a
                # TorchVersion), so the checkpoint loads with weights_only=True
            }
            save_checkpoint(state, latest)
            if cfg.keep_every and step % cfg.keep_every == 0:
                numbered = out / f"step_{step:08d}.pt"
                numbered.unlink(missing_ok=True)
                os.link(latest, numbered)  # same bytes, no second write; later replaces of latest leave it be

        g: torch.Generator | None = None  # the current step's generator, used by micro_loss

        def micro_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x.to(device, non_blocking=True)  # (b, C, H, W) in [-1, 1]
            if cfg.hflip:
                x = random_hflip(x, g)
            y = drop_labels(y.to(device), cfg.p_uncond, num_classes, g) if num_classes else None
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                return schedule.training_loss(net, x, y, generator=g)  # (b,)

        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.model, dynamic_ncols=True,
                   disable=not (progress and info.is_main))
        loss_value, step_times = math.nan, []  # step_times: data loading + compute, without checkpoint writes
        with open(log_path, "a", encoding="utf-8") if info.is_main else contextlib.nullcontext() as log, bar:
            t0 = time.perf_counter()
            for step, (x, y) in zip(range(start, cfg.steps), loader, strict=True):
                g = step_generator(cfg.seed, info.rank, step, device)
                lr = sched.get_last_lr()[0]  # the lr this update uses
                chunks = list(zip(x.chunk(cfg.grad_accum), y.chunk(cfg.grad_accum), strict=True))
                loss = all_mean(accumulate_grads(net, micro_loss, chunks, scaler), info)
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                ema.update(raw, step)
                loss_value = loss.item()  # also waits for the GPU, so step_times are real
                step_times.append(time.perf_counter() - t0)

                done = step + 1
                row = {"step": done, "loss": loss_value, "lr": lr}
                if info.is_main:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    if done % cfg.ckpt_every == 0 or done == cfg.steps:
                        checkpoint(done)
                    if cfg.sample_every and done % cfg.sample_every == 0:
                        _sample_grid(ema.module, schedule, out / "samples" / f"step_{done:08d}.png", cfg.seed)
                bar.update(1)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    recent = step_times[-cfg.log_every:]
                    bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{cfg.batch_size * len(recent) / sum(recent):.1f}")
                if on_step is not None:
                    on_step(row)
                t0 = time.perf_counter()

        # Throughput leaves out the first step of the run (lazy init, compilation) when there are others.
        timed = step_times[1:] if len(step_times) > 1 else step_times
        summary = {
            "model": cfg.model, "out_dir": str(out), "steps": start + len(step_times), "resumed_from": start,
            "steps_this_run": len(step_times), "final_loss": loss_value,
            "steps_per_s": len(timed) / sum(timed) if timed else math.nan,
            "images_per_s": cfg.batch_size * len(timed) / sum(timed) if timed else math.nan,
            "wall_s": time.perf_counter() - t_start, "world_size": info.world_size, "device": str(device),
            "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
            "checkpoint": str(latest), "loss_log": str(log_path),
            "params_digest": params_digest(raw), "ema_init_share": init_share(cfg.ema_decay, cfg.steps, cfg.ema_warmup),
            "scan_backend": kernels_that_ran(raw)["scan_backend"],
        }
        if info.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            if cfg.results_dir:
                append_row("train", {**summary, "config": cfg.to_dict(), **environment(device)}, cfg.results_dir)
        return summary
    finally:
        close_distributed(info)


def _sample_grid(model: nn.Module, schedule, path: Path, seed: int, n: int = 64) -> None:
    """A fixed-seed EMA sample grid (DPM-Solver, 50 steps), so grids of successive steps are comparable."""
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    save_grid(draw_samples(model, schedule, n, labels=labels, seed=seed), path)
