"""Which modules are token mixers, and which kernels they ran: what every result row records (STYLE.md point 4)."""

from __future__ import annotations

import torch.nn as nn

from dimstudy.ops.attention import Attention


def is_mixer(m: nn.Module) -> bool:
    """Attention, or anything shaped like a Mamba mixer (d_inner and d_state): counted and timed whole, not by its
    inner layers."""
    return isinstance(m, Attention) or (hasattr(m, "d_inner") and hasattr(m, "d_state"))


def kernels_that_ran(model: nn.Module) -> dict:
    """The scan and attention kernels the model's mixers ran last (comma-joined when they differ, None when none
    ran), and whether the scan ran mamba-ssm's fused kernel."""
    mixers = [m for m in model.modules() if is_mixer(m) and getattr(m, "last_backend", None)]
    scan = {m.last_backend for m in mixers if not isinstance(m, Attention)}
    attn = {m.last_backend for m in mixers if isinstance(m, Attention)}
    return {
        "scan_backend": ",".join(sorted(scan)) or None,
        "attn_backend": ",".join(sorted(attn)) or None,
        "fused": any(b == "cuda-fused" for b in scan) if scan else None,  # not "cuda-unfused"
    }
