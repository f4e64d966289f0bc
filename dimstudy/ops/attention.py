"""Multi-head self-attention with a choice of kernel.

Backends, same function:
- "sdpa"  torch.nn.functional.scaled_dot_product_attention (default; PyTorch picks flash/mem-efficient/math)
- "flash" flash-attn's `flash_attn_func` (needs the optional `flash` extra, CUDA and fp16/bf16 inputs)
- "math"  an explicit softmax(QK^T / sqrt(d)) V, the reference for tests

The backend that actually ran is kept in `last_backend` so result rows can record it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # optional kernel; importing it without its compiled extension raises more than ImportError
    from flash_attn import flash_attn_func
except Exception as e:  # noqa: BLE001
    flash_attn_func = None
    _FLASH_ERROR = f"{type(e).__name__}: {e}"
else:
    _FLASH_ERROR = ""

ATTN_BACKENDS = ("sdpa", "flash", "math")


def check_attn_backend(name: str) -> str:
    if name not in ATTN_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid choices: {', '.join(ATTN_BACKENDS)}")
    if name == "flash" and flash_attn_func is None:
        from dimstudy.ops.selective_scan import BackendUnavailableError

        raise BackendUnavailableError(
            f"attention backend 'flash' is unavailable: flash-attn could not be imported ({_FLASH_ERROR}). "
            "Install it with: pip install --no-build-isolation flash-attn"
        )
    return name


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) x3 -> (B, H, L, d), softmax in float32."""
    w = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
    return (w.softmax(-1) @ v.float()).to(q.dtype)


class Attention(nn.Module):
    """Pre-projection qkv attention, U-ViT style (no qkv bias by default). (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_backend: str = "sdpa", **_):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_backend = check_attn_backend(attn_backend)
        self.last_backend = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)  # (B, L, 3, H, hd)
        backend = self.attn_backend
        if backend == "flash" and x.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16):
            out = flash_attn_func(*qkv.unbind(2)).reshape(b, n, d)  # takes (B, L, H, hd) as is: no transposes
        else:
            backend = "math" if backend == "math" else "sdpa"
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, hd)
            fn = attention_math if backend == "math" else F.scaled_dot_product_attention
            out = fn(q, k, v).transpose(1, 2).reshape(b, n, d)
        self.last_backend = backend
        return self.proj(out)
