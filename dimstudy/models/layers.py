"""Pieces shared by every architecture: embedders, positional-embedding resizing, the output head.

Read top to bottom: timestep embeddings, patch embedding, positional embedding, then the head.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim), [cos | sin] halves."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """Sinusoid (256 frequencies) -> Linear -> SiLU -> Linear, as DiT and PixArt-alpha embed t for adaLN."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))  # (B, dim)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches to `dim` features: a Conv2d with kernel = stride = p (one Linear per patch)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        return self.proj(x)  # (B, dim, H/p, W/p)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, gh*gw, p*p*C) -> (B, C, gh*p, gw*p); each token's features are ordered (p, p, C)."""
    gh, gw = grid
    p = patch_size
    x = x.reshape(x.shape[0], gh, gw, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], channels, gh * p, gw * p)


def resize_pos_embed(pos: torch.Tensor, num_extra: int, old_grid: tuple[int, int], new_grid: tuple[int, int]):
    """Bilinearly resize the grid part of a (1, extra + gh*gw, D) positional embedding; extra rows are kept.

    Used on the fly when a model runs at a resolution it was not built for, and when a low-resolution
    checkpoint is loaded for weak-to-strong fine-tuning (paper Sec. 3.3).
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    extra, grid = pos[:, :num_extra], pos[:, num_extra:]
    d = pos.shape[-1]
    grid = grid.reshape(1, *old_grid, d).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)
    return torch.cat([extra, grid], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift, with (B, D) shift/scale broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm that normalizes a low-precision input in float32 against its float32 weight.

    Under bf16/fp16 autocast the input arrives in half precision while the weight stays float32; PyTorch then
    cannot use its fused kernel and falls back to a chain of elementwise ones (with a warning). Upcasting the
    input keeps one fused kernel and computes in float32, as mamba-ssm's own RMSNorm does; the output is cast
    back to the input's dtype. Same parameters and state dict as nn.RMSNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None or x.dtype == self.weight.dtype:
            return super().forward(x)
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)


class AdaLNHead(nn.Module):
    """Final layer: norm -> (optional) adaLN shift/scale from the condition -> Linear(D, p*p*C).

    `norm` is a class so DiM (RMSNorm) and other models can share the head.
    """

    def __init__(self, dim: int, patch_size: int, out_chans: int, adaln: bool, norm: type[nn.Module] = RMSNorm):
        super().__init__()
        self.norm = norm(dim, eps=1e-5) if issubclass(norm, nn.RMSNorm) else norm(dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)) if adaln else None
        self.linear = nn.Linear(dim, patch_size * patch_size * out_chans)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if self.ada is not None:
            shift, scale = self.ada(cond).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.linear(x)
