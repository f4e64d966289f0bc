"""`dimstudy sample`: draw images from a checkpoint (EMA weights by default) as PNGs plus a grid.

--resolution / --scale sample above the trained size (the network interpolates its positional embedding);
--upsample-guidance adds the DiM paper's Eq. (4) there (training-free upsampling, Sec. 3.3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dimstudy.cli.common import friendly, split_list


def register(app: typer.Typer) -> None:
    @app.command("sample")
    @friendly
    def sample(
        ckpt: Annotated[Path, typer.Option(help="Checkpoint file, or a run directory (uses its latest.pt).")],
        n: Annotated[int, typer.Option(help="Number of images.")] = 64,
        sampler: Annotated[str, typer.Option(help="dpm_solver, dpm_solver++, ddim or euler_maruyama.")] = "dpm_solver",
        steps: Annotated[int, typer.Option(help="Sampler steps (model evaluations).")] = 50,
        cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale s (U-ViT form); 0 = off.")] = 0.0,
        labels: Annotated[str | None, typer.Option(help="Class labels, comma-separated, cycled over the images "
                                                   "(class-conditional models; default: random).")] = None,
        out: Annotated[Path, typer.Option(help="Output directory: images/NNNNNN.png, grid.png, sample.json.")] = Path("samples"),
        ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights.")] = True,
        seed: Annotated[int, typer.Option(help="Seed of the initial noise (and random labels).")] = 0,
        batch_size: Annotated[int, typer.Option(help="Images per forward batch.")] = 64,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        progress: Annotated[bool, typer.Option(help="Show a progress bar per batch.")] = True,
        resolution: Annotated[int | None, typer.Option(help="Image side to sample at (default: the trained one).")] = None,
        scale: Annotated[int | None, typer.Option(help="Image side as a multiple m of the trained one.")] = None,
        upsample_guidance: Annotated[bool, typer.Option("--upsample-guidance/--no-upsample-guidance",
                                                        help="Eq. (4) guidance from the trained resolution; "
                                                        "needs a whole scale m >= 2.")] = False,
        ug_theta: Annotated[float, typer.Option(help="Upsample-guidance weight theta.")] = 1.0,
        ug_eta: Annotated[float, typer.Option(help="Guided fraction eta of the trajectory (the noisiest).")] = 0.3,
        cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="On CUDA, replay the "
                                                  "network from CUDA graphs (one per batch shape); no effect on "
                                                  "the CPU.")] = True,
        npz: Annotated[bool, typer.Option("--npz/--no-npz", help="Also write OUT/samples_NxHxWx3.npz, the ADM "
                                          "evaluation batch (arr_0: uint8, NHWC).")] = False,
        vae: Annotated[str, typer.Option(help="Latent models: the AutoencoderKL that decodes the samples (hub id or "
                                         "local folder; needs diffusers).")] = "stabilityai/sd-vae-ft-ema",
    ):
        """Sample images from a trained checkpoint.

        Writes OUT/images/000000.png ... (one PNG per image, ready for FID), OUT/grid.png and OUT/sample.json
        (the settings used); with --npz also the ADM batch. Latent models are decoded with --vae. --ckpt also takes a
        public DiM checkpoint (nnet_ema.pth or its <step>.ckpt/ directory).

        Example: dimstudy sample --ckpt runs/smoke --n 16 --sampler dpm_solver --steps 50 --out samples/smoke

        Training-free 2x: dimstudy sample --ckpt runs/smoke --scale 2 --upsample-guidance --out samples/smoke-x2
        (drop --upsample-guidance for plain high-resolution sampling, to compare).
        """
        from dimstudy.checks import check_choice, check_out_dir, check_ranges

        check_ranges(n=n, steps=steps, batch_size=batch_size, cfg_scale=cfg_scale, resolution=resolution, scale=scale,
                     ug_theta=ug_theta, ug_eta=ug_eta)
        check_out_dir(out)

        import torch

        from dimstudy.diffusion.samplers import SAMPLERS

        check_choice("sampler", sampler, SAMPLERS)  # before the checkpoint is read

        from dimstudy.data import save_pngs
        from dimstudy.diffusion import build_schedule
        from dimstudy.diffusion.sampling import draw_samples, save_grid
        from dimstudy.resolution import target_side, upsample_factor
        from dimstudy.runtime import resolve_device
        from dimstudy.train import load_checkpoint

        dev = resolve_device(device)
        model, cfg = load_checkpoint(ckpt, ema=ema, device=dev)
        y = None
        if labels:
            if not model.num_classes:
                raise ValueError(f"--labels given, but {cfg.model} in {ckpt} is unconditional")
            y = torch.tensor([int(v) for v in split_list(labels)]).repeat(n)[:n]  # cycle to n
            if y.min() < 0 or y.max() >= model.num_classes:
                raise ValueError(f"--labels must lie in [0, {model.num_classes}), got {labels!r}")
        side, upsample = model.img_size, None
        if resolution is not None or scale is not None:
            side = target_side(model.img_size, resolution, scale)
        if upsample_guidance:
            upsample = dict(m=upsample_factor(model.img_size, side), theta=ug_theta, eta=ug_eta)
        latent = model.in_chans not in (1, 3)
        x = draw_samples(model, build_schedule(cfg.schedule), n, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                         labels=y, batch_size=batch_size, seed=seed, device=dev, progress=progress, img_size=side,
                         upsample=upsample, cuda_graphs=cuda_graphs, clamp=not latent)
        if latent:  # SD-VAE latents (x 0.18215) -> images in [-1, 1]
            from dimstudy.data.latents import decode_latents, load_vae

            decoder = load_vae(vae, dev)
            x = torch.cat([decode_latents(z, decoder).cpu() for z in x.split(batch_size)])
        save_pngs(x, out / "images")
        if npz:
            import numpy as np

            from dimstudy.data.datasets import float_to_uint8

            arr = float_to_uint8(x).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
            np.savez(out / f"samples_{'x'.join(map(str, arr.shape))}.npz", arr_0=arr)
        save_grid(x, out / "grid.png")
        meta = dict(ckpt=str(ckpt), model=cfg.model, ema=ema, n=n, sampler=sampler, steps=steps,
                    cfg_scale=cfg_scale, seed=seed, labels=labels, schedule=cfg.schedule,
                    trained_size=model.img_size, size=side, upsample_guidance=upsample,
                    cuda_graphs=cuda_graphs and dev.type == "cuda", vae=vae if latent else None)
        (out / "sample.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        typer.echo(f"wrote {n} images ({side}x{side}) to {out / 'images'} and the grid {out / 'grid.png'}")
