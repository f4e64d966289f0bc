"""Latent-diffusion plumbing: image folder -> latents file (training data), latents -> images (sampling).

The autoencoder is diffusers' `AutoencoderKL`, by default the Stable-Diffusion KL-VAE fine-tuned with EMA
(`stabilityai/sd-vae-ft-ema`), the VAE of the DiM/U-ViT ImageNet runs. Latents are stored multiplied by
0.18215, the factor that brings that VAE's latents to about unit variance, so the `latents` dataset
returns them as-is and `decode_latents` divides it back out. diffusers is an optional extra
(`pip install diffusers`) imported only here, only when used.

Encoding keeps the posterior mean, so a latents file is a deterministic function of its images.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dimstudy.data.datasets import build_dataset

SD_VAE = "stabilityai/sd-vae-ft-ema"
SD_VAE_SCALE = 0.18215


def load_vae(vae: str | nn.Module | None = None, device: str | torch.device | None = None) -> nn.Module:
    """An AutoencoderKL in eval mode: a module as given, else `from_pretrained` of a hub id or local folder."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(vae, nn.Module):
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError("latent datasets need diffusers: pip install diffusers (or dimstudy[latent])") from e
        vae = AutoencoderKL.from_pretrained(vae or SD_VAE)
    return vae.to(device).eval()


@torch.no_grad()
def encode_folder(src: str | Path, out: str | Path, vae: str | nn.Module | None = None, resolution: int = 256,
                  batch_size: int = 32, device: str | torch.device | None = None, class_labels: bool = False,
                  scale: float = SD_VAE_SCALE) -> Path:
    """Encode every image under `src` (the `folder` dataset at `resolution`) into one .pt latents file.

    The file holds "latents" (N, C, r/f, r/f) float32 (f = the VAE's downsampling, 8 for the SD VAE),
    "labels" (N,) and "classes" when `class_labels`, plus "scale", "vae" and "image_resolution".
    """
    images = build_dataset("folder", resolution, data_dir=src, class_labels=class_labels)
    vae_name = vae if isinstance(vae, str) else (SD_VAE if vae is None else type(vae).__name__)
    vae = load_vae(vae, device)
    param = next(vae.parameters())
    latents, labels = [], []
    for x, y in DataLoader(images, batch_size=batch_size, shuffle=False):
        x = x.to(device=param.device, dtype=param.dtype)  # (B, 3, r, r) in [-1, 1]
        latents.append((vae.encode(x).latent_dist.mean * scale).float().cpu())  # (B, C, r/f, r/f)
        labels.append(y)
    record = {"latents": torch.cat(latents), "scale": scale, "vae": vae_name, "image_resolution": resolution}
    if class_labels:
        record |= {"labels": torch.cat(labels), "classes": images.classes}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, out)
    return out


@torch.no_grad()
def decode_latents(z: torch.Tensor, vae: nn.Module, scale: float = SD_VAE_SCALE) -> torch.Tensor:
    """(N, C, h, w) scaled latents -> (N, 3, h*f, w*f) images in [-1, 1], on z's device."""
    param = next(vae.parameters())
    x = vae.decode(z.to(device=param.device, dtype=param.dtype) / scale).sample
    return x.clamp(-1, 1).to(device=z.device, dtype=torch.float32)
