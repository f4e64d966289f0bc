"""Kernels and their pure-PyTorch twins: the selective scan, the Mamba mixer, attention."""

from dimstudy.ops.mamba import Mamba, mamba_modules, set_scan_backend, use_scan_backend
from dimstudy.ops.selective_scan import (
    SCAN_BACKENDS,
    BackendUnavailableError,
    available_scan_backends,
    check_scan_backend,
    describe_scan_backend,
    fused_mamba_available,
    get_selective_scan,
    resolve_scan_backend,
    selective_scan,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
)

__all__ = [
    "SCAN_BACKENDS",
    "BackendUnavailableError",
    "Mamba",
    "available_scan_backends",
    "check_scan_backend",
    "describe_scan_backend",
    "fused_mamba_available",
    "get_selective_scan",
    "mamba_modules",
    "resolve_scan_backend",
    "selective_scan",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_scan_torch",
    "set_scan_backend",
    "use_scan_backend",
]
