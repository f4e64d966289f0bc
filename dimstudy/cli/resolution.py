"""`dimstudy finetune` (weak-to-strong, Sec. 3.3) and `dimstudy resolution-study` (direct vs Eq. (4) vs fine-tune)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dimstudy.cli.common import friendly


def _run_name(ckpt: Path) -> str:
    """runs/smoke or runs/smoke/latest.pt -> smoke."""
    return ckpt.name if ckpt.is_dir() or not ckpt.suffix else ckpt.parent.name or ckpt.stem


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    @friendly
    def finetune(
        from_: Annotated[Path, typer.Option("--from", help="Low-resolution checkpoint file or run directory.")],
        resolution: Annotated[int | None, typer.Option(help="Target image side in pixels.")] = None,
        scale: Annotated[int | None, typer.Option(help="Target side as a multiple of the checkpoint's (2: 256 -> 512).")] = None,
        steps: Annotated[int | None, typer.Option(help="Optimiser steps (default 64000, the paper's).")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per step (default: the source run's).")] = None,
        lr: Annotated[float | None, typer.Option(help="AdamW learning rate (default 1e-4, the paper's).")] = None,
        weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay (default 0, the paper's).")] = None,
        warmup_steps: Annotated[int | None, typer.Option(help="Linear LR warm-up (default: the source run's).")] = None,
        ema_decay: Annotated[float | None, typer.Option(help="EMA decay (default: the source run's).")] = None,
        dataset: Annotated[str | None, typer.Option(help="High-resolution data (default: the source run's).")] = None,
        data_dir: Annotated[str | None, typer.Option(help="Where that dataset lives.")] = None,
        model: Annotated[str | None, typer.Option(help="The checkpoint's model (the default); another one is "
                                                  "refused, naming both: weak-to-strong keeps the network.")] = None,
        ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Start from the EMA weights (the paper's choice).")] = True,
        out: Annotated[str | None, typer.Option(help="Run directory (default: runs/<source run>-ft<R>px).")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed of data order and noise.")] = None,
        ckpt_every: Annotated[int | None, typer.Option(help="Steps between latest.pt writes.")] = None,
        sample_every: Annotated[int | None, typer.Option(help="Steps between EMA sample grids; 0 = none.")] = None,
        num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Any TrainConfig field as KEY=VALUE (TOML value); "
                                                       "repeatable, e.g. --set grad_clip=1.0.")] = None,
        resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help="Continue from OUT/latest.pt "
                                                    "(default: when it exists).")] = None,
        progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    ):
        """Fine-tune a low-resolution checkpoint at a higher resolution ("weak-to-strong", paper Sec. 3.3).

        The positional embedding is resized bilinearly over its grid (extra-token rows kept), the pad tokens
        and separators are reused unchanged, the EMA restarts from the loaded weights, and training goes on
        with the source run's settings except lr 1e-4, wd 0 and 64K steps (the paper's 256 -> 512 fine-tune);
        flags override them. Writes OUT/init.pt (the adapted start) and OUT/finetune.json beside the usual run.

        Example: dimstudy finetune --from runs/smoke --scale 2 --steps 200 --out runs/smoke-ft32
        """
        from dimstudy.checks import check_ranges

        check_ranges(resolution=resolution, scale=scale, steps=steps, batch_size=batch_size, lr=lr,
                     weight_decay=weight_decay, warmup_steps=warmup_steps, ema_decay=ema_decay, ckpt_every=ckpt_every,
                     sample_every=sample_every, num_workers=num_workers)

        from dimstudy.resolution import finetune as run_finetune
        from dimstudy.train.config import parse_set

        flags = dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                     ema_decay=ema_decay, dataset=dataset, data_dir=data_dir, model=model, seed=seed,
                     ckpt_every=ckpt_every, sample_every=sample_every, num_workers=num_workers, device=device)
        overrides = {**parse_set(set_ or []), **{k: v for k, v in flags.items() if v is not None}}
        if out is None:
            from dimstudy.resolution import target_side
            from dimstudy.train import read_checkpoint

            side = target_side(read_checkpoint(from_)["config"]["resolution"], resolution, scale)
            out = f"runs/{_run_name(from_)}-ft{side}px"
        summary = run_finetune(from_, resolution, scale, out_dir=out, ema=ema, resume=resume, progress=progress,
                               **overrides)
        typer.echo(json.dumps(summary, indent=2))

    @app.command("resolution-study")
    @friendly
    def resolution_study(
        from_: Annotated[Path, typer.Option("--from", help="Low-resolution checkpoint file or run directory.")],
        scale: Annotated[int, typer.Option(help="Upscaling factor m (2 or 3).")] = 2,
        n: Annotated[int, typer.Option(help="Images per method (FID depends strongly on it; it is recorded).")] = 32,
        sampler: Annotated[str, typer.Option(help="dpm_solver, dpm_solver++, ddim or euler_maruyama.")] = "dpm_solver",
        steps: Annotated[int, typer.Option(help="Sampler steps.")] = 20,
        ug_theta: Annotated[float, typer.Option(help="Upsample-guidance weight theta.")] = 1.0,
        ug_eta: Annotated[float, typer.Option(help="Guided fraction eta of the trajectory (the noisiest).")] = 0.3,
        cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (class-conditional models).")] = 0.0,
        ft_steps: Annotated[int, typer.Option(help="Fine-tune steps.")] = 50,
        ft_batch_size: Annotated[int | None, typer.Option(help="Fine-tune batch (default: the source run's).")] = None,
        ft_lr: Annotated[float | None, typer.Option(help="Fine-tune learning rate (default 1e-4).")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Any fine-tune TrainConfig field as KEY=VALUE.")] = None,
        num_reference: Annotated[int, typer.Option(help="Reference images at the high resolution.")] = 128,
        out: Annotated[Path | None, typer.Option(help="Study directory (default: runs/resolution/<source run>-x<m>).")] = None,
        results: Annotated[Path | None, typer.Option(help="Results store root for the `resolution` table "
                                                     "(default: $DIMSTUDY_RESULTS or results).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the initial noise (shared by every method) and the fine-tune.")] = 0,
        batch_size: Annotated[int, typer.Option(help="Images per sampling batch.")] = 64,
        fid_weights: Annotated[Path | None, typer.Option(help="Inception weights file (torch-fidelity format).")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
        cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="On CUDA, replay the "
                                                  "network from CUDA graphs while sampling; no effect on the CPU.")] = True,
    ):
        """Compare, at m x the checkpoint's resolution: direct sampling, upsample guidance (Eq. 4) and a short
        weak-to-strong fine-tune, by FID/KID against the data at that resolution.

        Writes OUT/side_by_side.png (one labelled panel per method, same initial noise), a grid per method,
        the fine-tune run under OUT/finetune, and one row per method to the `resolution` table. The defaults
        take a few minutes on a 2-core CPU; on a GPU raise --n, --num-reference and --ft-steps.

        Example: dimstudy resolution-study --from runs/smoke --scale 2 --out runs/res-smoke
        """
        from dimstudy.checks import check_out_dir, check_ranges

        check_ranges(scale=scale, n=n, steps=steps, ug_theta=ug_theta, ug_eta=ug_eta, cfg_scale=cfg_scale,
                     batch_size=batch_size, num_reference=num_reference, lr=ft_lr)
        check_ranges(steps=ft_steps, batch_size=ft_batch_size)
        if n < 2:  # each method's FID needs two samples at least
            check_ranges(num_samples=n)
        if out is not None:
            check_out_dir(out)

        from dimstudy.resolution import resolution_study as run_study
        from dimstudy.train.config import parse_set

        ft = {**parse_set(set_ or []), **{k: v for k, v in dict(batch_size=ft_batch_size, lr=ft_lr).items() if v is not None}}
        rows = run_study(from_, scale, n=n, sampler=sampler, steps=steps, theta=ug_theta, eta=ug_eta, cfg_scale=cfg_scale,
                         finetune_steps=ft_steps, finetune_overrides=ft, num_reference=num_reference,
                         out_dir=out or Path("runs/resolution") / f"{_run_name(from_)}-x{scale}", results_dir=results,
                         seed=seed, batch_size=batch_size, device=device,
                         fid_kwargs={"fid_weights": fid_weights} if fid_weights else None, progress=progress,
                         cuda_graphs=cuda_graphs)
        for r in rows:
            kid = f"  KID {r['kid_mean']:.4f}" if r.get("kid_mean") is not None else ""
            typer.echo(f"{r['method']:>18}  {r['train_resolution']} -> {r['resolution']} px  FID {r['fid']:.2f}{kid}"
                       f"  (n={r['n_samples']}, sample {r['sample_s']:.0f} s)")
        typer.echo(f"side-by-side grid: {rows[0]['grid']} under {results or 'the results store'}")
