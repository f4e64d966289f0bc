"""Diffusion Mamba (DiM, Teng et al. 2024) and the plain Mamba baseline.

The network follows the paper's Sec. 3.2 as the public code realises it (see the project notes):

    patchify -> + pos-embed -> depthwise 3x3 conv (LFE in) -> pad tokens, (H+3) x (W+3) grid
    -> [t, c, s1, s2, s3, grid in scan order] -> L Mamba blocks, each re-ordering the grid to its scan
    pattern, with U-ViT long skips -> drop the pads -> depthwise 3x3 conv (LFE out) -> adaLN head
    -> unpatchify

Each of DiM's four designs is a constructor flag whose default is the paper's; a design that is off
becomes `None`/`nn.Identity` so `forward` has no ablation branches:

    multi_scan      (MS)   scan_patterns cycle per block     off: every block scans pattern 1
    long_skip       (LSC)  concat + Linear(2D, D) skips      off: none
    padding_tokens  (PT)   3 end-of-line pad tokens + 3 separators   off: none
    local_conv      (LFE)  the two depthwise 3x3 convs       off: none

The Mamba baseline is this class with all four off: plain raster-scan Mamba blocks, same conditioning.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dimstudy.models.layers import (
    AdaLNHead,
    PatchEmbed,
    RMSNorm,
    TimestepMLP,
    resize_pos_embed,
    timestep_embedding,
    unpatchify,
)
from dimstudy.models.scans import block_schedule, parse_patterns, transition_index
from dimstudy.ops.mamba import Mamba
from dimstudy.registry import register_model


class DiMBlock(nn.Module):
    """x <- x + (1 + g) * mixer(RMSNorm(x) * (1 + s) + b), after an optional long-skip fusion.

    `perm` (from the caller's schedule) re-orders the sequence to this block's scan pattern after the skip
    fusion; the residual stream then travels in that order. With adaLN-single, (b, s, g) = shared projection of the condition + this block's
    own (3, D) table (PixArt-alpha). There is no MLP, as in DiM.
    """

    def __init__(self, dim: int, mixer: type[nn.Module], adaln: bool, skip: bool, layer_idx: int, **mixer_kw):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm = RMSNorm(dim, eps=1e-5)
        self.mixer = mixer(dim, layer_idx=layer_idx, **mixer_kw)
        self.ada_table = nn.Parameter(torch.randn(3, dim) * 0.02) if adaln else None

    def forward(self, x, mod: torch.Tensor | None, skip: torch.Tensor | None = None, perm: torch.Tensor | None = None):
        # x, skip: (B, L, D) in the previous block's scan order; perm re-orders to this block's pattern.
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, 2D) -> (B, L, D)
        if perm is not None:
            x = x.index_select(1, perm)
        h = self.norm(x)
        if self.ada_table is None:
            return x + self.mixer(h)
        shift, scale, gate = (mod + self.ada_table[None]).unbind(1)  # 3 x (B, D)
        h = h * (1 + scale[:, None]) + shift[:, None]
        return x + (1 + gate[:, None]) * self.mixer(h)


class DiM(nn.Module):
    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 2,
        in_chans: int = 3,
        dim: int = 512,
        depth: int = 25,
        num_classes: int = 0,
        # DiM's four designs (paper Sec. 3.2); defaults are the paper's.
        multi_scan: bool = True,
        long_skip: bool = True,
        padding_tokens: bool = True,
        local_conv: bool = True,
        scan_patterns: str = "1234",
        adaln: bool = True,
        mixer: type[nn.Module] = Mamba,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        scan_backend: str = "auto",
    ):
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.dim, self.depth, self.num_classes = dim, depth, num_classes
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.config = dict(
            multi_scan=multi_scan, long_skip=long_skip, padding_tokens=padding_tokens, local_conv=local_conv,
            scan_patterns=scan_patterns, adaln=adaln, d_state=d_state, d_conv=d_conv, expand=expand,
        )
        self.patterns = parse_patterns(scan_patterns) if multi_scan else ("1",)
        self.schedule = block_schedule(depth, self.patterns)
        # d_conv pad tokens (3 in DiM): the causal conv then never mixes the end of one line with the next.
        self.num_pad = d_conv if padding_tokens else 0
        self.num_extra = 2 + self.num_pad  # t, c, then the separators

        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        self.label_emb = nn.Embedding(num_classes + 1, dim)  # index num_classes = null class (CFG / unconditional)
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + self.grid[0] * self.grid[1], dim))  # over [t, c, grid]
        self.conv_in = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if local_conv else nn.Identity()
        self.conv_out = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if local_conv else nn.Identity()
        self.separators = nn.Parameter(torch.randn(1, self.num_pad, dim) * 0.02) if padding_tokens else None
        self.pad_tokens = nn.Parameter(torch.randn(self.num_pad, dim) * 0.02) if padding_tokens else None
        # adaLN-single: one projection of the condition shared by every block (+ a table per block).
        self.t_embed = TimestepMLP(dim) if adaln else None
        self.ada_proj = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim)) if adaln else None

        n_skip = (depth - 1) // 2 if long_skip else 0
        self.push = set(range(1, 1 + n_skip))  # blocks whose output is kept for a long skip
        mixer_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend) if mixer is Mamba else {}
        self.blocks = nn.ModuleList(
            DiMBlock(dim, mixer, adaln, skip=i >= depth - n_skip, layer_idx=i, **mixer_kw) for i in range(depth)
        )
        self.head = AdaLNHead(dim, patch_size, in_chans, adaln)
        self._perm_cache: dict = {}
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if not getattr(m.bias, "_no_reinit", False):  # keep Mamba's dt bias
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for name, p in self.named_parameters():  # Mamba out_proj: kaiming-uniform scaled by 1/sqrt(n_layer)
            if name.endswith("mixer.out_proj.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(self.depth)

    # -- sequence layout ---------------------------------------------------------------------------
    def sequence_length(self, img_size: int | None = None) -> int:
        """Tokens every block scans: t, c, separators and the padded grid."""
        g = (img_size or self.img_size) // self.patch_size
        hp, wp = self.padded_grid((g, g))
        return self.num_extra + hp * wp

    def padded_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid[0] + self.num_pad, grid[1] + self.num_pad

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, D) -> (B, gh+3, gw+3, D): p0 p1 p2 end every row, then bottom row r is all p_r."""
        if self.pad_tokens is None:
            return x
        b, gh, gw, d = x.shape
        p = self.pad_tokens.to(x.dtype)
        x = torch.cat([x, p[None, None].expand(b, gh, -1, -1)], dim=2)  # (B, gh, gw+3, D)
        rows = p[None, :, None].expand(b, -1, gw + self.num_pad, -1)  # (B, 3, gw+3, D)
        return torch.cat([x, rows], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if y is None:
            y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
        h = self.patch_embed(x)  # (B, D, gh, gw)
        grid = (h.shape[-2], h.shape[-1])
        tokens = torch.cat(
            [
                timestep_embedding(t, self.dim)[:, None].to(h.dtype),  # raw sinusoidal time token
                self.label_emb(y)[:, None],  # class token (null class when unconditional)
                h.flatten(2).transpose(1, 2),  # (B, gh*gw, D)
            ],
            dim=1,
        ) + resize_pos_embed(self.pos_embed, 2, self.grid, grid)
        img = tokens[:, 2:].transpose(1, 2).reshape(b, self.dim, *grid)
        img = self.conv_in(img).permute(0, 2, 3, 1)  # (B, gh, gw, D)
        hp, wp = self.padded_grid(grid)
        seq = [tokens[:, :2]] + ([self.separators.expand(b, -1, -1)] if self.separators is not None else [])
        x = torch.cat(seq + [self.pad(img).reshape(b, hp * wp, self.dim)], dim=1)  # (B, extra + hp*wp, D)

        cond = mod = None
        if self.ada_proj is not None:
            cond = self.t_embed(t) + self.label_emb(y)  # (B, D)
            mod = self.ada_proj(cond).view(b, 3, self.dim)

        order, skips = "1", []  # the grid starts in row-major order
        for i, blk in enumerate(self.blocks):
            skip = None
            if blk.skip_linear is not None:
                skip, skip_order = skips.pop()
                skip = self.reorder(skip, skip_order, order, hp, wp)  # a no-op for the mirrored schedule
            x = blk(x, mod, skip, self.perm_index(order, self.schedule[i], hp, wp, x.device))
            order = self.schedule[i]
            if i in self.push:
                skips.append((x, order))
        x = self.reorder(x, order, "1", hp, wp)
        img = x[:, self.num_extra :].reshape(b, hp, wp, self.dim)[:, : grid[0], : grid[1]]  # drop the pads
        img = self.conv_out(img.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        out = self.head(img, cond)  # (B, gh*gw, p*p*C)
        return unpatchify(out, self.patch_size, self.in_chans, grid)

    def perm_index(self, src: str, dst: str, hp: int, wp: int, device) -> torch.Tensor | None:
        """Index over the whole (extra + hp*wp) sequence that re-orders its grid part from `src` to `dst`."""
        key = (src, dst, hp, wp, str(device))
        if key not in self._perm_cache:
            idx = transition_index(src, dst, hp, wp)
            if idx is not None:
                idx = torch.cat([torch.arange(self.num_extra), idx + self.num_extra]).to(device)
            self._perm_cache[key] = idx
        return self._perm_cache[key]

    def reorder(self, x: torch.Tensor, src: str, dst: str, hp: int, wp: int) -> torch.Tensor:
        idx = self.perm_index(src, dst, hp, wp, x.device)
        return x if idx is None else x.index_select(1, idx)


# -- size presets -----------------------------------------------------------------------------------
# Paper Tab. 1 sizes. DiM-S is the CIFAR-10 model (unconditional, 3x32x32); DiM-L/H are the ImageNet-256
# latent models (class-conditional, 4x32x32 SD-VAE latents), the configurations the paper counted.
CIFAR = dict(img_size=32, in_chans=3, num_classes=0)
LATENT_256 = dict(img_size=32, in_chans=4, num_classes=1000)
NO_DESIGNS = dict(multi_scan=False, long_skip=False, padding_tokens=False, local_conv=False)


def _dim(base: dict, kw: dict) -> DiM:
    return DiM(**{**base, **kw})


@register_model("dim", note="test size")
def dim_tiny_2(**kw):
    return _dim(dict(CIFAR, patch_size=2, dim=64, depth=5), kw)


@register_model("dim", paper={"params_m": 50, "gflops": 12, "source": "Tab. 1"})
def dim_s_2(**kw):
    return _dim(dict(CIFAR, patch_size=2, dim=512, depth=25), kw)


@register_model("dim", paper={"params_m": 380, "gflops": 94, "source": "Tab. 1"})
def dim_l_2(**kw):
    return _dim(dict(LATENT_256, patch_size=2, dim=1024, depth=49), kw)


@register_model("dim", paper={"params_m": 860, "gflops": 210, "source": "Tab. 1"})
def dim_h_2(**kw):
    return _dim(dict(LATENT_256, patch_size=2, dim=1536, depth=49), kw)


@register_model("mamba", note="test size; DiM with all four designs off")
def mamba_tiny_2(**kw):
    return _dim(dict(CIFAR, **NO_DESIGNS, patch_size=2, dim=64, depth=5), kw)


@register_model("mamba", note="DiM-S/2 shape with all four designs off")
def mamba_s_2(**kw):
    return _dim(dict(CIFAR, **NO_DESIGNS, patch_size=2, dim=512, depth=25), kw)


@register_model("mamba", note="Fig. 3 baseline: plain raster Mamba, 60 x 1536, ~0.9B params, beside dim_h_2")
def mamba_900m_2(**kw):
    return _dim(dict(LATENT_256, **NO_DESIGNS, patch_size=2, dim=1536, depth=60), kw)
