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

Conditioning, as the public code has it (issue 13 made these the defaults; the old ones stay as options so
checkpoints written before it load as they were trained, see `dimstudy.train.checkpoint`):

    adaLN-single   SiLU(TimestepMLP(t) + ada_label_emb[y]) -> Linear(D, 3D), shared by every block
                   (ada_class_table=False: reuse the token table label_emb, as dimstudy did before)
    head           SiLU(sinusoid_D(t) + label_emb[y]) -> Linear(D, 2D) -> shift, scale
                   (head_cond="adaln": the adaLN condition above, as dimstudy did before)
    pads           pad_layout="lateral" (256 px) or "cyclic" (the public 512 px fine-tune's rho_pad)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

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
from dimstudy.models.registry import register_model
from dimstudy.models.scans import block_schedule, parse_patterns, transition_index
from dimstudy.ops.mamba import Mamba

HEAD_CONDS = ("sinusoid", "adaln")  # the head's condition: public DiM's, or dimstudy's before issue 13
PAD_LAYOUTS = ("lateral", "cyclic")  # lateral: 256 px (S/L/H); cyclic: the public 512 px fine-tune (rho_pad)


class DiMBlock(nn.Module):
    """x <- x + (1 + g) * mixer(RMSNorm(x) * (1 + s) + b), after an optional long-skip fusion.

    `perm` (from the caller's schedule) re-orders the sequence to this block's scan pattern after the skip
    fusion; the residual stream then travels in that order. With adaLN-single, (b, s, g) = shared projection of the condition + this block's
    own (3, D) table (PixArt-alpha). There is no MLP, as in DiM.
    """

    def __init__(self, dim: int, mixer: Callable[..., nn.Module], adaln: bool, skip: bool, layer_idx: int):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm = RMSNorm(dim, eps=1e-5)
        # Built here, after skip_linear: the mixer's own random inits (Mamba's dt_proj and conv1d, which
        # initialize_weights leaves alone) keep their place in the RNG stream, so a seed gives the same weights.
        self.mixer = mixer(dim, layer_idx=layer_idx)
        self.ada_table = nn.Parameter(torch.empty(3, dim)) if adaln else None  # init: DiM.initialize_weights

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
        # The token mixer: a factory called as mixer(dim, layer_idx=i) once per block (a class such as Mamba
        # or Attention, or a functools.partial of one). None: Mamba with the four settings below, which a
        # given factory does not see (d_conv still sets the pad count).
        mixer: Callable[..., nn.Module] | None = None,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        scan_backend: str = "auto",
        # Public-code conditioning and pad layout (module docstring); the alternatives are dimstudy's old ones.
        head_cond: str = "sinusoid",
        ada_class_table: bool = True,
        pad_layout: str = "lateral",
    ):
        super().__init__()
        for opt, value, valid in (("head_cond", head_cond, HEAD_CONDS), ("pad_layout", pad_layout, PAD_LAYOUTS)):
            if value not in valid:
                raise ValueError(f"unknown {opt} {value!r}; valid choices: {', '.join(valid)}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.dim, self.depth, self.num_classes = dim, depth, num_classes
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.config = dict(
            multi_scan=multi_scan, long_skip=long_skip, padding_tokens=padding_tokens, local_conv=local_conv,
            scan_patterns=scan_patterns, adaln=adaln, d_state=d_state, d_conv=d_conv, expand=expand,
            head_cond=head_cond, ada_class_table=ada_class_table, pad_layout=pad_layout,
        )
        self.head_cond, self.pad_layout = head_cond, pad_layout
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
        self.separators = nn.Parameter(torch.empty(1, self.num_pad, dim)) if padding_tokens else None
        self.pad_tokens = nn.Parameter(torch.empty(self.num_pad, dim)) if padding_tokens else None
        # adaLN-single: one projection of the condition shared by every block (+ a table per block).
        self.t_embed = TimestepMLP(dim) if adaln else None
        # its own class table (public: adaln_single.emb.class_embedder), separate from the class token's
        self.ada_label_emb = nn.Embedding(num_classes + 1, dim) if adaln and ada_class_table else None
        self.ada_proj = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim)) if adaln else None

        n_skip = (depth - 1) // 2 if long_skip else 0
        self.push = set(range(1, 1 + n_skip))  # blocks whose output is kept for a long skip
        if mixer is None:
            mixer = partial(Mamba, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
        self.blocks = nn.ModuleList(
            DiMBlock(dim, mixer, adaln, skip=i >= depth - n_skip, layer_idx=i) for i in range(depth)
        )
        self.head = AdaLNHead(dim, patch_size, in_chans, adaln)
        self._perm_cache: dict = {}
        self.initialize_weights()

    def initialize_weights(self):
        """Every init choice, each as the public DiM code makes it (project notes; issue 13, audit item 3)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if getattr(m.bias, "_no_reinit", False):
                    continue  # Mamba's dt_proj: its own init (dt log-uniform in [1e-3, 0.1]), ops.mamba
                # in_proj, x_proj, skip Linears, adaLN's Linear(D, 3D), the head's Linears: PyTorch's default
                # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weight, reset here so this method alone fixes the init.
                # Biases are zero (mamba-ssm's _init_weights, which the public model applies to every Linear).
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                if name.startswith("t_embed."):  # timestep MLP: N(0, 0.02), as PixArt-alpha / DiT
                    nn.init.normal_(m.weight, std=0.02)
                if name.endswith("mixer.out_proj"):  # GPT-2-style residual rescale: default init / sqrt(n_layer)
                    with torch.no_grad():
                        m.weight /= math.sqrt(self.depth)
            elif isinstance(m, nn.Embedding):  # class token table and adaLN class table: N(0, 0.02)
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.Conv2d):  # patch embedding and the two depthwise convs: PyTorch's default
                m.reset_parameters()
        for blk in self.blocks:
            if blk.ada_table is not None:  # per-block (shift, scale, gate) table: randn / sqrt(D), as PixArt-alpha
                nn.init.normal_(blk.ada_table, std=self.dim**-0.5)
        nn.init.zeros_(self.pos_embed)  # learnable positional embedding over [t, c, grid], starts at zero
        for p in (self.separators, self.pad_tokens):  # separators and pad tokens: randn * 0.02
            if p is not None:
                nn.init.normal_(p, std=0.02)

    # -- sequence layout ---------------------------------------------------------------------------
    def sequence_length(self, img_size: int | None = None) -> int:
        """Tokens every block scans: t, c, separators and the padded grid."""
        g = (img_size or self.img_size) // self.patch_size
        hp, wp = self.padded_grid((g, g))
        return self.num_extra + hp * wp

    def padded_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid[0] + self.num_pad, grid[1] + self.num_pad

    def pad_index(self, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """(n, gw+n) index of the pad token at each of the n bottom rows' cells, n = num_pad.

        Every image row ends with p0 .. p_{n-1} in both layouts. The bottom rows differ:
        lateral: row r is all p_r (so every column, read top to bottom, also ends with p0 .. p_{n-1});
        cyclic: the pad positions, read in row-major order, repeat p0 p1 p2 p0 ... (the public code's
        rho_pad, its 512 px fine-tune): cell (gh + r, c) holds p_{(r (gw + n) + c) mod n}.
        Made on `device` directly: a copy from the host is not allowed while a CUDA graph is captured.
        """
        n, wp = self.num_pad, grid[1] + self.num_pad
        r, c = torch.arange(n, device=device)[:, None], torch.arange(wp, device=device)[None]
        return r.expand(n, wp) if self.pad_layout == "lateral" else (r * wp + c) % n

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, D) -> (B, gh+n, gw+n, D): p0 .. p_{n-1} end every row, then n bottom rows (`pad_index`)."""
        if self.pad_tokens is None:
            return x
        b, gh, gw, d = x.shape
        p = self.pad_tokens.to(x.dtype)
        x = torch.cat([x, p[None, None].expand(b, gh, -1, -1)], dim=2)  # (B, gh, gw+n, D)
        rows = p[self.pad_index((gh, gw), p.device)]  # (n, gw+n, D)
        return torch.cat([x, rows[None].expand(b, -1, -1, -1)], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if y is None:
            y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
        h = self.patch_embed(x)  # (B, D, gh, gw)
        grid = (h.shape[-2], h.shape[-1])
        time_token = timestep_embedding(t, self.dim).to(h.dtype)  # (B, D) raw sinusoid, no parameters
        class_token = self.label_emb(y)  # (B, D), the null class when unconditional
        tokens = torch.cat(
            [time_token[:, None], class_token[:, None], h.flatten(2).transpose(1, 2)], dim=1  # (B, 2+gh*gw, D)
        ) + resize_pos_embed(self.pos_embed, 2, self.grid, grid)
        img = tokens[:, 2:].transpose(1, 2).reshape(b, self.dim, *grid)
        img = self.conv_in(img).permute(0, 2, 3, 1)  # (B, gh, gw, D)
        hp, wp = self.padded_grid(grid)
        seq = [tokens[:, :2]] + ([self.separators.expand(b, -1, -1)] if self.separators is not None else [])
        x = torch.cat(seq + [self.pad(img).reshape(b, hp * wp, self.dim)], dim=1)  # (B, extra + hp*wp, D)

        cond = mod = head_cond = None
        if self.ada_proj is not None:
            table = self.ada_label_emb if self.ada_label_emb is not None else self.label_emb
            cond = self.t_embed(t) + table(y)  # (B, D), adaLN-single's condition
            mod = self.ada_proj(cond).view(b, 3, self.dim)
            # the head's: the raw D-channel sinusoid (the time token before pos-embed) + the class token
            head_cond = time_token + class_token if self.head_cond == "sinusoid" else cond

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
        out = self.head(img, head_cond)  # (B, gh*gw, p*p*C)
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
# Paper Tab. 1 sizes, with the public code's own counts (`public_params_m`: its configs' state dicts, project
# notes on the checkpoint format; 50,568,716 / 386,063,376 / 862,407,184). DiM-S is the CIFAR-10 model (unconditional, 3x32x32); DiM-L/H are the ImageNet-256
# latent models (class-conditional, 4x32x32 SD-VAE latents), the configurations the paper counted.
CIFAR = dict(img_size=32, in_chans=3, num_classes=0)
LATENT_256 = dict(img_size=32, in_chans=4, num_classes=1000)
NO_DESIGNS = dict(multi_scan=False, long_skip=False, padding_tokens=False, local_conv=False)


def _dim(base: dict, kw: dict) -> DiM:
    return DiM(**{**base, **kw})


@register_model("dim", note="test size")
def dim_tiny_2(**kw):
    return _dim(dict(CIFAR, patch_size=2, dim=64, depth=5), kw)


@register_model("dim", paper={"params_m": 50, "gflops": 12, "source": "Tab. 1", "public_params_m": 50.57})
def dim_s_2(**kw):
    return _dim(dict(CIFAR, patch_size=2, dim=512, depth=25), kw)


@register_model("dim", paper={"params_m": 380, "gflops": 94, "source": "Tab. 1", "public_params_m": 386.06})
def dim_l_2(**kw):
    return _dim(dict(LATENT_256, patch_size=2, dim=1024, depth=49), kw)


@register_model("dim", paper={"params_m": 860, "gflops": 210, "source": "Tab. 1", "public_params_m": 862.41})
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
