"""Drawing images from a trained network: `draw_samples` (seeded batches through a sampler, with CFG or upsample
guidance) and `save_grid` (one PNG of them). Training, the CLI, studies and the resolution study all sample here.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from dimstudy.diffusion.graphs import graphed
from dimstudy.diffusion.guidance import UpsampleGuidance
from dimstudy.diffusion.samplers import sample


@torch.no_grad()
def draw_samples(
    model: nn.Module,
    schedule,
    n: int,
    *,
    sampler: str = "dpm_solver",
    steps: int = 50,
    cfg_scale: float = 0.0,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device=None,
    progress: bool = False,
    img_size: int | None = None,
    upsample: dict | None = None,
    cuda_graphs: bool = True,
    clamp: bool = True,
) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] on the CPU, drawn in batches from one seeded generator.

    clamp=False keeps the sampler's output as it is: latents (about unit variance) must not be clipped to [-1, 1].
    A class-conditional model (num_classes > 0) gets `labels` (n,), or labels drawn uniformly from the seed.
    img_size: sample at this side instead of the model's own (it interpolates its positional embedding).
    upsample: UpsampleGuidance options {"m", "theta", "eta"}: Eq. (4) guidance, which then applies the CFG.
    cuda_graphs: on CUDA, replay the network's forward from CUDA graphs (dimstudy.diffusion.graphs); pass a
    `graphed` model to keep its graphs across calls. No effect on the CPU.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = graphed(model, device, cuda_graphs)
    num_classes = getattr(model, "num_classes", 0)
    null_class = num_classes if num_classes else None
    if num_classes and labels is None:
        labels = torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator(device).manual_seed(seed)
    shape = (model.in_chans, img_size or model.img_size, img_size or model.img_size)
    eps_fn = UpsampleGuidance(model, schedule, cfg_scale=cfg_scale, null_class=null_class, **upsample) if upsample else None
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = labels[start : start + b].to(device) if num_classes else None
        x = sample(model, schedule, (b, *shape), sampler=sampler, steps=steps, y=y,
                   cfg_scale=0.0 if eps_fn else cfg_scale, null_class=null_class, generator=g, device=device,
                   progress=progress, eps_fn=eps_fn)
        out.append((x.clamp(-1, 1) if clamp else x).cpu())
    return torch.cat(out)


GRID_MIN_WIDTH = 512  # px: 8 x 16 px samples would otherwise make a 146 px grid, too small to judge in a report


def save_grid(x: torch.Tensor, path: str | Path, min_width: int = GRID_MIN_WIDTH) -> Path:
    """Images (n, C, H, W) in [-1, 1] as one square-ish PNG grid, at least `min_width` wide: small images are
    enlarged by a whole factor, nearest-neighbour, so every sample pixel becomes a block of equal pixels."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = math.ceil(math.sqrt(x.shape[0]))
    scale = max(1, math.ceil(min_width / (nrow * x.shape[-1])))
    if scale > 1:
        x = torch.nn.functional.interpolate(x.float(), scale_factor=scale, mode="nearest")
    save_image((x + 1) / 2, path, nrow=nrow)
    return path
