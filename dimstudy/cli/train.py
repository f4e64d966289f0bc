"""`dimstudy train`: run a TrainConfig, from a TOML preset plus flags (flags win)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dimstudy.cli.common import friendly, split_list

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def parse_set(items: list[str]) -> dict:
    """['lr=1e-4', 'model_kwargs.scan_patterns="12"'] -> {'lr': 1e-4, 'model_kwargs': {'scan_patterns': '12'}}.

    Values are read as TOML values; one that is not valid TOML is taken as a bare string (dataset=digits).
    """
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def train_preset(preset: str | None) -> Path | dict | None:
    """A TOML path as it is; a study preset's name (`smoke`) as its [train] table, out_dir runs/NAME by default."""
    if preset is None or preset.endswith(".toml") or Path(preset).is_file():
        if preset is not None and not Path(preset).is_file():
            raise FileNotFoundError(f"no preset file {preset}")
        return preset
    from dimstudy.study.config import resolve_preset

    table = tomllib.loads(resolve_preset(preset).read_text(encoding="utf-8")).get("train", {})
    return {"out_dir": f"runs/{preset}", **table}


def register(app: typer.Typer) -> None:
    @app.command("train")
    @friendly
    def train(
        preset: Annotated[str | None, typer.Option(help="TOML experiment file (its keys are TrainConfig fields), or a "
                                                   "study preset's name as `ablate --preset` takes it (smoke, "
                                                   "gpu-small, ...): its [train] table, run in runs/NAME.")] = None,
        model: Annotated[str | None, typer.Option(help="Registered model, e.g. dim_s_2 (see `dimstudy models`).")] = None,
        dataset: Annotated[str | None, typer.Option(help="digits or photos (both offline), cifar10, folder or latents.")] = None,
        data_dir: Annotated[str | None, typer.Option(help="Where the dataset lives (folder/latents need it).")] = None,
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
        precision: Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed of init, data order and noise.")] = None,
        out: Annotated[str | None, typer.Option(help="Run directory: checkpoints, loss log, config, samples.")] = None,
        drop: Annotated[list[str] | None, typer.Option(help="DiM component to switch off (repeat or comma-list): "
                                                        "multi_scan, long_skip, padding_tokens, local_conv.")] = None,
        scan_patterns: Annotated[str | None, typer.Option(help="DiM scan patterns cycled per block, e.g. 1234.")] = None,
        scan_backend: Annotated[str | None, typer.Option(help="Selective-scan kernel: auto, torch, ref or cuda.")] = None,
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
    ):
        """Train a diffusion model; defaults are the paper's CIFAR-10 settings, a preset and flags override them.

        Resuming continues the same run exactly (weights, EMA, AdamW, LR schedule, data order, RNG).
        Multi-GPU: torchrun --nproc_per_node 8 $(which dimstudy) train --preset ... (only rank 0 writes).

        Example: dimstudy train --preset experiments/smoke.toml --steps 50 --out runs/smoke --drop long_skip
        """
        from dimstudy.checks import check_out_dir

        if out is not None:
            check_out_dir(out)

        from dimstudy.components import component_flags
        from dimstudy.train import load_config, train

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
            num_workers=num_workers, device=device, compile=compile,
        )
        cfg = load_config(train_preset(preset), **{**sets, **{k: v for k, v in flags.items() if v is not None}},
                          model_kwargs=model_kwargs or None)
        summary = train(cfg, resume=resume, progress=progress)
        typer.echo(json.dumps(summary, indent=2))
