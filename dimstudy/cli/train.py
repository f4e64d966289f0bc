"""`dimstudy train`: run a TrainConfig, from a TOML preset plus flags (flags win); `--dry-run` only resolves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from dimstudy.checks import PRECISIONS
from dimstudy.cli.common import friendly, split_list
from dimstudy.models.components import COMPONENTS
from dimstudy.presets import TRAIN_PRESETS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


# TrainConfig files by name, in this order: a project's own ./experiments first, then the package's
TRAIN_PRESET_DIRS = (Path("experiments"), TRAIN_PRESETS)
SAMPLE_TABLE = "sample"  # a preset's [sample] table: how its run is sampled for FID (printed, not trained on)
# `train`'s dataset when neither a preset nor a flag names one: the bundled digits, so a first run needs no
# download. TrainConfig's own default stays the paper's cifar10, which studies and saved configs rely on.
DEFAULT_DATASET = "digits"


def dry_run(cfg, sample: dict) -> dict:
    """What `train` would run, without data: the resolved config, the network's size and GMACs (built on the meta
    device, so DiM-H/2 costs nothing, with the input the dataset would give: standin_model_kwargs), and the
    preset's sampling settings.
    """
    import torch

    from dimstudy.flops import build_on_meta, count_flops, count_params
    from dimstudy.train.config import standin_model_kwargs

    kwargs = standin_model_kwargs(cfg)
    model = build_on_meta(cfg.model, **kwargs)
    x = torch.zeros(1, model.in_chans, model.img_size, model.img_size, device="meta")
    y = torch.zeros(1, dtype=torch.long, device="meta") if model.num_classes else None
    gmacs = count_flops(model, x, torch.zeros(1, device="meta"), y).gflops
    return {"config": cfg.to_dict(), "model_args": {"name": cfg.model, "kwargs": kwargs},
            "params_m": round(count_params(model) / 1e6, 2), "gflops": round(gmacs, 2),
            "input": f"{model.in_chans}x{model.img_size}x{model.img_size}", **({"sample": sample} if sample else {})}


def preset_table(preset: str) -> dict:
    """A preset's keys. A study preset's name, as `ablate --preset` takes it (smoke, gpu-small, ...): its [train]
    table, run in runs/NAME. Else a TOML path or a TrainConfig preset's name (dimstudy/presets/: imagenet256, ...)."""
    from dimstudy.study.config import list_presets, resolve_preset

    if preset in list_presets():
        table = tomllib.loads(resolve_preset(preset).read_text(encoding="utf-8")).get("train", {})
        return {"out_dir": f"runs/{preset}", **table}
    try:
        return tomllib.loads(resolve_preset(preset, TRAIN_PRESET_DIRS).read_text(encoding="utf-8"))
    except ValueError:
        names = sorted(set(list_presets()) | set(list_presets(TRAIN_PRESET_DIRS)))
        raise ValueError(f"unknown preset {str(preset)!r}; valid choices: {', '.join(names)} "
                         "(or a path to a .toml)") from None


def register(app: typer.Typer) -> None:
    @app.command("train")
    @friendly
    def train(
        preset: Annotated[str | None, typer.Option(help="TOML experiment file or a preset name in dimstudy/presets/ "
                                                   "(smoke, imagenet256, imagenet512-ft; keys are TrainConfig fields), "
                                                   "or a study preset's name (gpu-small, ...): its [train] table, run "
                                                   "in runs/NAME.")] = None,
        model: Annotated[str | None, typer.Option(help="Registered model, e.g. dim_s_2 (see `dimstudy models`).")] = None,
        dataset: Annotated[str | None, typer.Option(help="digits or photos (both offline), cifar10, folder or latents. "
                                                     f"Default: the preset's, else {DEFAULT_DATASET}.")] = None,
        data_dir: Annotated[str | None, typer.Option(help="Where the dataset lives (folder/latents need it).")] = None,
        skip_unreadable: Annotated[bool | None, typer.Option("--skip-unreadable", help="Dataset folder: leave out "
                                                             "files that cannot be read (one warning) instead of stopping.")] = None,
        resolution: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
        class_cond: Annotated[bool | None, typer.Option("--class-cond/--uncond", help="Train with class labels (CFG).")] = None,
        schedule: Annotated[str | None, typer.Option(help="vpsde, ddpm_linear or ddpm_scaled_linear.")] = None,
        steps: Annotated[int | None, typer.Option(help="Optimiser steps in total.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per optimiser step, over all GPUs.")] = None,
        lr: Annotated[float | None, typer.Option(help="AdamW learning rate after warm-up.")] = None,
        warmup_steps: Annotated[int | None, typer.Option(help="Linear LR warm-up steps.")] = None,
        ema_decay: Annotated[float | None, typer.Option(help="EMA decay per step.")] = None,
        ema_warmup: Annotated[bool | None, typer.Option("--ema-warmup/--no-ema-warmup", help="Decay min(ema_decay, "
                              "(1+t)/(10+t)) at step t, for short runs (off in U-ViT/DiM).")] = None,
        grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimiser step.")] = None,
        grad_clip: Annotated[float | None, typer.Option(help="Max gradient norm; 0 = off.")] = None,
        p_uncond: Annotated[float | None, typer.Option(help="Label dropout for CFG (class-conditional runs).")] = None,
        precision: Annotated[Literal[PRECISIONS] | None, typer.Option(help="Mixed precision (auto: bf16 on CUDA, "
                                                                      "fp32 on the CPU).")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed of init, data order and noise.")] = None,
        out: Annotated[str | None, typer.Option(help="Run directory: checkpoints, loss log, config, samples.")] = None,
        drop: Annotated[list[str] | None, typer.Option(help="DiM component to switch off (repeat or comma-list): "
                                                        f"{', '.join(COMPONENTS)}.")] = None,
        scan_patterns: Annotated[str | None, typer.Option(help="DiM scan patterns cycled per block, e.g. 1234.")] = None,
        scan_backend: Annotated[str | None, typer.Option(help="Selective-scan kernel: auto, triton, cuda, torch or ref.")] = None,
        ckpt_every: Annotated[int | None, typer.Option(help="Steps between latest.pt writes.")] = None,
        keep_every: Annotated[int | None, typer.Option(help="Steps between kept numbered checkpoints; 0 = none.")] = None,
        sample_every: Annotated[int | None, typer.Option(help="Steps between EMA sample grids; 0 = none.")] = None,
        num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
        compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Any TrainConfig field as KEY=VALUE (TOML value); "
                                                       "repeatable, e.g. --set weight_decay=0 --set model_kwargs.d_state=8.")] = None,
        resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help="Continue from OUT/latest.pt "
                                                    "(default: when it exists).")] = None,
        progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
        dry_run_: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config, the model's size and "
                                               "GMACs and the preset's sampling settings; touch no data, train nothing.")] = False,
    ):
        """Train a diffusion model; defaults are the paper's CIFAR-10 settings (on the offline digits unless a preset
        or --dataset names other data), a preset and flags override them.

        Resuming continues the same run exactly (weights, EMA, AdamW, LR schedule, data order, RNG).
        --set init_from=RUN starts from another run's EMA weights (the ones it samples with) instead of a fresh init.
        Multi-GPU: torchrun --nproc_per_node 8 $(which dimstudy) train --preset ... (only rank 0 writes).

        Examples:

          dimstudy train --preset dimstudy/presets/smoke.toml --steps 50 --out runs/smoke --drop long_skip

          dimstudy train --preset imagenet256 --model dim_l_2 --dry-run
        """
        from dimstudy.checks import check_out_dir

        if out is not None:
            check_out_dir(out)

        from dimstudy.models.components import component_flags
        from dimstudy.train import load_config, train
        from dimstudy.train.config import parse_set

        sets = parse_set(set_ or [])
        model_kwargs = dict(sets.pop("model_kwargs", {}))
        drops = [d for item in drop or [] for d in split_list(item)]
        if drops:
            model_kwargs.update(component_flags(drop=drops))
        model_kwargs.update({k: v for k, v in dict(scan_patterns=scan_patterns, scan_backend=scan_backend).items() if v})
        flags = dict(
            model=model, dataset=dataset, data_dir=data_dir, resolution=resolution, class_cond=class_cond,
            schedule=schedule, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
            ema_decay=ema_decay, ema_warmup=ema_warmup, grad_accum=grad_accum, grad_clip=grad_clip, p_uncond=p_uncond, precision=precision,
            seed=seed, out_dir=out, ckpt_every=ckpt_every, keep_every=keep_every, sample_every=sample_every,
            num_workers=num_workers, device=device, compile=compile, skip_unreadable=skip_unreadable,
        )
        file = preset_table(preset) if preset is not None else {}
        sample, file_kwargs = file.pop(SAMPLE_TABLE, {}), file.pop("model_kwargs", {})
        cfg = load_config(None, **{"dataset": DEFAULT_DATASET, **file, **sets, **{k: v for k, v in flags.items() if v is not None}},
                          model_kwargs={**file_kwargs, **model_kwargs} or None)
        if dry_run_:
            typer.echo(json.dumps(dry_run(cfg, sample), indent=2))
            return
        summary = train(cfg, resume=resume, progress=progress)
        typer.echo(json.dumps(summary, indent=2))
