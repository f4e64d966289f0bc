"""Higher resolutions from a low-resolution checkpoint, the paper's Sec. 3.3, three ways:

- direct:   run the network at the higher resolution as it is (it interpolates its positional embedding
            on the fly); the paper reports repeated patterns and broken global layout.
- upsample_guidance: the same, with Eq. (4) over the noisiest eta of the trajectory
            (`dimstudy.diffusion.UpsampleGuidance`), training-free.
- finetune: "weak-to-strong": load the low-resolution weights into the network built at the new size
            (positional embedding resized bilinearly over its grid part, the extra-token rows kept, the
            resolution-free pad tokens and separators reused unchanged), reset the EMA to them, and train on
            with the paper's fine-tune settings (ImageNet 256 -> 512: lr 1e-4, wd 0, 64K steps).

`resolution_study` compares the three on one checkpoint: FID/KID at the high resolution against the data at
that resolution, one side-by-side PNG (same initial noise in every panel), rows in the `resolution` table.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from dimstudy.data import float_to_uint8
from dimstudy.diffusion import build_schedule
from dimstudy.diffusion.sampling import draw_samples, save_grid
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.results import DEFAULT_ROOT, append_row, environment
from dimstudy.runtime import resolve_device
from dimstudy.train import load_checkpoint, save_checkpoint, train
from dimstudy.train.checkpoint import adapt_state_dict, build_model, fit_model_args, read_checkpoint
from dimstudy.train.config import TrainConfig
from dimstudy.train.files import checkpoint_path

TABLE = "resolution"
METHODS = ("direct", "upsample_guidance", "finetune")
# The paper's weak-to-strong fine-tune (ImageNet 256 -> 512, project notes); everything else is the source run's.
FINETUNE_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.0, "steps": 64_000}
INIT_WEIGHTS = "init.pt"  # the adapted weights a fine-tune starts from, inside its run directory


# -- sizes ---------------------------------------------------------------------------------------------------
def target_side(base: int, resolution: int | None = None, scale: int | None = None) -> int:
    """The new side from `resolution` R or `scale` m (R = m * base); given both, they must agree."""
    if resolution is None and scale is None:
        raise ValueError("give a target: --resolution R or --scale m")
    if scale is not None:
        if scale < 1:
            raise ValueError(f"--scale must be >= 1, got {scale}")
        if resolution is not None and resolution != scale * base:
            raise ValueError(f"--resolution {resolution} and --scale {scale} disagree ({scale} x {base} = {scale * base})")
        return scale * base
    if resolution < 1:
        raise ValueError(f"--resolution must be >= 1, got {resolution}")
    return resolution


def upsample_factor(base: int, side: int) -> int:
    """m of Eq. (4) for sampling a `base`-side model at `side`: a whole number >= 2."""
    if side % base or side < 2 * base:
        raise ValueError(f"upsample guidance needs a whole scale >= 2: {side} is {side / base:g} x the model's {base}")
    return side // base


# -- weak-to-strong loading ----------------------------------------------------------------------------------
def load_at_resolution(
    ckpt: str | Path,
    resolution: int | None = None,
    scale: int | None = None,
    *,
    ema: bool = True,
    model: str | None = None,
    model_kwargs: dict | None = None,
) -> tuple[nn.Module, TrainConfig, dict]:
    """(network built at the new resolution holding the adapted weights, the source's config, what was loaded).

    `resolution` is in the units of the source config's `resolution` (pixels); the network's img_size scales
    by the same factor (so latent models scale their latent side). EMA weights by default, as the paper's
    fine-tune starts from. `model`, when given, must be the source's own (weak-to-strong changes the resolution,
    not the network), else a ValueError names both before any weights are used; `model_kwargs` override the
    source's (a mismatch then says what differs).
    """
    raw = read_checkpoint(ckpt)
    source = str(checkpoint_path(ckpt))
    name = raw["model_args"]["name"]
    if model is not None and model != name:
        raise ValueError(f"--model {model} does not match the checkpoint's model {name} ({source}); "
                         f"leave --model out to fine-tune {name}")
    cfg = TrainConfig.from_dict(raw["config"])
    new_res = target_side(cfg.resolution, resolution, scale)
    img = raw["model_args"]["kwargs"]["img_size"] * new_res / cfg.resolution
    if img != int(img):
        raise ValueError(f"{new_res} px is not a whole network size for a model trained at {cfg.resolution} px")
    weights = raw["ema"]["module"] if ema else raw["model"]
    args = {"name": name,
            "kwargs": {**raw["model_args"]["kwargs"], **(model_kwargs or {}), "img_size": int(img)}}
    args = fit_model_args(args, weights, cfg.schedule, source)
    net = build_model(args)
    if int(img) % net.patch_size:
        raise ValueError(f"{new_res} px gives img_size {int(img)}, not divisible by the patch size {net.patch_size}")
    net.load_state_dict(adapt_state_dict(weights, net, source=source))
    info = {"source": source, "source_step": int(raw["step"]), "source_resolution": cfg.resolution,
            "resolution": new_res, "source_weights": "ema" if ema else "model", "model_args": args}
    return net.eval(), cfg, info


def finetune_config(source_cfg: TrainConfig, resolution: int, out_dir: str | Path, **overrides) -> TrainConfig:
    """The fine-tune's TrainConfig: the source run's, at `resolution`, with FINETUNE_DEFAULTS, then overrides.

    It starts from OUT/init.pt (`init_from`); a results_dir of the source is not inherited.
    """
    out_dir = Path(out_dir)
    d = {**source_cfg.to_dict(), **FINETUNE_DEFAULTS, "resolution": resolution, "out_dir": str(out_dir),
         "init_from": str(out_dir / INIT_WEIGHTS), "results_dir": None}
    if overrides.get("model_kwargs"):
        overrides["model_kwargs"] = {**d["model_kwargs"], **overrides["model_kwargs"]}
    return TrainConfig.from_dict(d, **overrides)


def finetune(
    source: str | Path,
    resolution: int | None = None,
    scale: int | None = None,
    *,
    out_dir: str | Path,
    ema: bool = True,
    resume: bool | None = None,
    progress: bool = True,
    **overrides,
) -> dict:
    """Weak-to-strong fine-tune of the checkpoint `source` at a higher resolution; returns train()'s summary.

    Writes the adapted weights to OUT/init.pt, where the trainer starts (its EMA equal to them), and
    OUT/finetune.json (source, step, resolutions). `overrides` are TrainConfig fields (steps, batch_size, lr,
    warmup_steps, model_kwargs, ...). An existing OUT/latest.pt is resumed unless resume=False, as in `train`.
    """
    net, source_cfg, info = load_at_resolution(source, resolution, scale, ema=ema, model=overrides.get("model"),
                                               model_kwargs=overrides.get("model_kwargs"))
    cfg = finetune_config(source_cfg, info["resolution"], out_dir, **overrides)
    out = Path(out_dir)
    resume = (out / "latest.pt").exists() if resume is None else resume
    if not resume:
        save_checkpoint(net.state_dict(), out / INIT_WEIGHTS)  # atomic, like every checkpoint
        (out / "finetune.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    del net
    return {**train(cfg, resume=resume, progress=progress), "finetuned_from": info["source"]}


# -- the study -----------------------------------------------------------------------------------------------
def side_by_side(panels: dict[str, torch.Tensor], path: str | Path, per_panel: int = 16, min_width: int = 256) -> Path:
    """One PNG: a labelled grid per method, left to right. Images (n, C, H, W) in [-1, 1]; the first
    `per_panel` of each, nearest-upscaled by a whole factor so a panel is at least `min_width` wide."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    grids = []
    for x in panels.values():
        x = x[:per_panel]
        g = make_grid(float_to_uint8(x).expand(-1, 3, -1, -1), nrow=math.ceil(math.sqrt(len(x))), padding=2, pad_value=255)
        k = max(1, math.ceil(min_width / g.shape[-1]))
        grids.append(g.repeat_interleave(k, -2).repeat_interleave(k, -1).permute(1, 2, 0).numpy())  # (H, W, 3)
    label_h, gap = 18, 8
    width = sum(g.shape[1] for g in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, label_h + max(g.shape[0] for g in grids)), "white")
    draw, x0 = ImageDraw.Draw(canvas), 0
    for label, g in zip(panels, grids, strict=True):
        draw.text((x0 + 2, 3), label, fill="black")
        canvas.paste(Image.fromarray(g), (x0, label_h))
        x0 += g.shape[1] + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def resolution_study(
    source: str | Path,
    scale: int = 2,
    *,
    n: int = 32,
    sampler: str = "dpm_solver",
    steps: int = 20,
    theta: float = 1.0,
    eta: float = 0.3,
    cfg_scale: float = 0.0,
    finetune_steps: int = 50,
    finetune_overrides: dict | None = None,
    num_reference: int = 128,
    out_dir: str | Path = "runs/resolution",
    results_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    fid_kwargs: dict | None = None,
    progress: bool = False,
    cuda_graphs: bool = True,
) -> list[dict]:
    """Direct sampling, upsample guidance and a short fine-tune, from the checkpoint `source` at `scale` x its
    resolution, each scored by FID/KID against the dataset at that resolution; returns the rows it appended.

    Every method draws its images from the same seed, so the panels of OUT/side_by_side.png share their
    initial noise image by image. The fine-tune (OUT/finetune) takes the source's batch size, the paper's
    lr/wd, a warm-up of min(source's, steps // 10) and an EMA decay of min(source's, 1 - 10 / steps)
    unless `finetune_overrides` say otherwise; its EMA weights are sampled.
    Pixel-space checkpoints only (FID needs images, not latents). The defaults are sized for a 2-core CPU
    (a few minutes with dim_tiny_2 at 16 -> 32 px); FID from 32 images is only good for comparing the
    rows of one study, so raise n, num_reference and finetune_steps on a GPU.
    """
    from dimstudy.metrics import compute_metrics  # here, not at the top: it loads torch-fidelity

    dev = resolve_device(device)
    out, root = Path(out_dir), Path(results_dir or DEFAULT_ROOT)
    low, cfg = load_checkpoint(source, device=dev)
    if low.in_chans not in (1, 3):
        raise ValueError(f"the resolution study scores images with FID; {cfg.model} in {source} has {low.in_chans} channels")
    hi_side, hi_res = scale * low.img_size, scale * cfg.resolution
    m = upsample_factor(low.img_size, hi_side)
    schedule = build_schedule(cfg.schedule)
    sample_kw = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, batch_size=batch_size, seed=seed,
                     device=dev, progress=progress, cuda_graphs=cuda_graphs)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    study = f"{out.name}-{stamp}"

    images, timings, extra = {}, {}, {}
    t0 = time.perf_counter()
    images["direct"] = draw_samples(low, schedule, n, img_size=hi_side, **sample_kw)
    timings["direct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images["upsample_guidance"] = draw_samples(low, schedule, n, img_size=hi_side,
                                               upsample=dict(m=m, theta=theta, eta=eta), **sample_kw)
    timings["upsample_guidance"] = time.perf_counter() - t0
    kernels = {"direct": kernels_that_ran(low)}
    kernels["upsample_guidance"] = kernels["direct"]

    # A short fine-tune must not spend itself warming up, and its EMA must be able to move: at the source's
    # decay (0.9999 in the paper) 100 steps would leave the EMA at 99% the loaded weights, i.e. at `direct`.
    ft = {"steps": finetune_steps, "warmup_steps": min(cfg.warmup_steps, finetune_steps // 10),
          "ema_decay": max(0.0, min(cfg.ema_decay, 1 - 10 / finetune_steps)), "device": device,
          "num_workers": 0 if dev.type == "cpu" else cfg.num_workers, "ckpt_every": finetune_steps,
          "keep_every": 0, "sample_every": 0, "seed": seed, **(finetune_overrides or {})}
    summary = finetune(source, scale=scale, out_dir=out / "finetune", resume=False, progress=progress, **ft)
    high, ft_cfg = load_checkpoint(out / "finetune", device=dev)
    source_info = json.loads((out / "finetune" / "finetune.json").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    images["finetune"] = draw_samples(high, schedule, n, **sample_kw)
    timings["finetune"] = time.perf_counter() - t0
    kernels["finetune"] = kernels_that_ran(high)
    extra["finetune"] = {"finetune_steps": ft_cfg.steps, "finetune_lr": ft_cfg.lr, "finetune_wd": ft_cfg.weight_decay,
                         "finetune_batch_size": ft_cfg.batch_size, "finetune_warmup": ft_cfg.warmup_steps,
                         "finetune_ema_decay": ft_cfg.ema_decay, "finetune_s": summary["wall_s"],
                         "finetune_final_loss": summary["final_loss"]}

    grid_rel = Path(TABLE) / f"{study}.png"  # a copy beside the table keeps the results store self-contained
    side_by_side({f"{k} ({hi_res} px)": v for k, v in images.items()}, out / "side_by_side.png")
    (root / grid_rel).parent.mkdir(parents=True, exist_ok=True)
    (root / grid_rel).write_bytes((out / "side_by_side.png").read_bytes())

    rows = []
    for method, x in images.items():
        save_grid(x[:64], out / f"{method}.png")
        t0 = time.perf_counter()
        metrics = compute_metrics(x, cfg.dataset, resolution=hi_res, num_reference=num_reference,
                                  data_dir=cfg.data_dir, device=dev, seed=seed, **(fid_kwargs or {}))
        guided = method == "upsample_guidance"
        row = {
            "study": study, "method": method, "model": cfg.model, "checkpoint": source_info["source"],
            "source_step": source_info["source_step"], "dataset": cfg.dataset, "schedule": cfg.schedule,
            "scale": scale, "train_resolution": cfg.resolution, "resolution": hi_res,
            "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale,
            "theta": theta if guided else None, "eta": eta if guided else None, "m": m if guided else None,
            "n_samples": metrics["num_samples"], "num_reference": metrics["num_reference"],
            "fid": metrics["fid"], "kid_mean": metrics.get("kid_mean"), "kid_std": metrics.get("kid_std"),
            "reference": metrics["reference"], "feature_extractor": metrics["feature_extractor"],
            "preprocess": metrics["preprocess"], "finetune_steps": 0, "sample_s": timings[method],
            "fid_s": time.perf_counter() - t0, "cuda_graphs": cuda_graphs and dev.type == "cuda",
            "seed": seed, "grid": str(grid_rel), "scan_backend": kernels[method].get("scan_backend"),
            "attn_backend": kernels[method].get("attn_backend"), **extra.get(method, {}), **environment(dev),
        }
        append_row(TABLE, row, root)
        rows.append(row)
    (out / "rows.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    return rows
