"""U-ViT (Bao et al. 2023): a ViT backbone for diffusion with U-Net-like long skips.

    tokens [t, (c), patches] + learnable pos-embed
    -> depth//2 in-blocks (each output kept) -> 1 mid block -> depth//2 out-blocks, each first fusing
       the most recent kept output by concat + Linear(2D, D)
    -> LayerNorm -> Linear(D, p*p*C) -> unpatchify -> 3x3 conv

Blocks are pre-LN attention + GELU MLP. Flags default to U-ViT's (`skip=True, conv=True`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dimstudy.models.layers import PatchEmbed, resize_pos_embed, timestep_embedding, unpatchify
from dimstudy.models.registry import register_model
from dimstudy.ops.attention import Attention


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class UViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool, attn_backend: str):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_backend=attn_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, 2D) -> (B, L, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 2,
        in_chans: int = 3,
        dim: int = 512,
        depth: int = 13,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        num_classes: int = 0,
        skip: bool = True,
        conv: bool = True,
        attn_backend: str = "sdpa",
    ):
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.dim, self.depth, self.num_classes = dim, depth, num_classes
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.config = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, skip=skip, conv=conv)
        self.num_extra = 1 + (num_classes > 0)

        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        self.label_emb = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None  # + null class for CFG
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extra + self.grid[0] * self.grid[1], dim))
        blk = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_backend=attn_backend)
        self.in_blocks = nn.ModuleList(UViTBlock(dim, skip=False, **blk) for _ in range(depth // 2))
        self.mid_block = UViTBlock(dim, skip=False, **blk)
        self.out_blocks = nn.ModuleList(UViTBlock(dim, skip=skip, **blk) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch_size * patch_size * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        self.initialize_weights()

    def initialize_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def sequence_length(self, img_size: int | None = None) -> int:
        return self.num_extra + ((img_size or self.img_size) // self.patch_size) ** 2

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        h = self.patch_embed(x)  # (B, D, gh, gw)
        grid = (h.shape[-2], h.shape[-1])
        extra = [timestep_embedding(t, self.dim)[:, None].to(h.dtype)]  # (B, 1, D)
        if self.label_emb is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
            extra.append(self.label_emb(y)[:, None])
        x = torch.cat(extra + [h.flatten(2).transpose(1, 2)], dim=1)  # (B, extra + gh*gw, D)
        x = x + resize_pos_embed(self.pos_embed, self.num_extra, self.grid, grid)

        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, self.num_extra :]  # (B, gh*gw, p*p*C)
        return self.final_layer(unpatchify(x, self.patch_size, self.in_chans, grid))


# -- size presets -----------------------------------------------------------------------------------
@register_model("uvit", note="test size")
def uvit_tiny_2(**kw):
    return UViT(**{**dict(img_size=32, in_chans=3, dim=64, depth=5, num_heads=4), **kw})


@register_model("uvit", paper={"params_m": 44, "source": "Tab. 5 (U-ViT-S on CIFAR-10)"})
def uvit_s_2(**kw):
    return UViT(**{**dict(img_size=32, in_chans=3, dim=512, depth=13, num_heads=8), **kw})


@register_model("uvit", note="Fig. 3 baseline: 29 x 1536 (14+1+14), 24 heads of 64, ~0.9B params, beside dim_h_2")
def uvit_900m_2(**kw):
    return UViT(**{**dict(img_size=32, in_chans=4, num_classes=1000, dim=1536, depth=29, num_heads=24), **kw})
