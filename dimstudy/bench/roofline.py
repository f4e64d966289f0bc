"""What this GPU can do, measured, and the floor it puts under a model's iteration time.

Two rates, measured once per sweep on the sweep's own GPU, in a worker of their own (`measure_device`):

- **matmul rate**: median TFLOP/s of an n x n x n GEMM at the sweep's dtype on random data (n = 8192 on
  CUDA; zeros would flatter it). It is the "100 %" that a row's achieved TFLOP/s is a fraction of: an
  MFU against what this card, driver and cuBLAS really deliver, not against a datasheet.
- **copy bandwidth**: median GB/s of a device-to-device `dst.copy_(src)` of 1 GiB, counting the bytes
  read plus the bytes written (so it is comparable with byte counts that also count both).

The floor of one iteration (`floor`), assuming compute and memory traffic do not overlap:

    floor_ms = FLOPs / matmul rate  +  minimum bytes / copy bandwidth

FLOPs are dimstudy.flops' count (2 x MACs; the selective scan and attention included, charged at the
GEMM rate, which only makes the floor lower). `min_bytes` is the traffic an ideally fused network
cannot avoid, counted exactly as:

    every parameter read once                                        params x w
  + for every call of a *layer*: its first input read once and its output written once, numel x w

with w the dtype's width in bytes (integer inputs, e.g. class labels, at their own width). A *layer* is
a Mamba mixer or an Attention module taken whole (their inner tensors - q/k/v, the scan's delta/B/C
and states - stay on chip in an ideal kernel, as in FlashAttention and mamba-ssm's fused scan), or any
other module that owns parameters directly (Linear, Conv, norms, Embedding). Parameter-free modules
(SiLU, GELU) and tensor code between modules (adds, gathers, concatenations) are free: a fused kernel
would fold them into a neighbour. For `--mode train` the floor is 3 x the forward floor (the usual
"backward = 2 x forward" rule applied to both terms; optimizer traffic not counted).

`max(compute, memory)` would be the strict roofline bound; the sum is what the floor reports, and both
terms are kept in every row (`floor_compute_ms`, `floor_memory_ms`) so either can be formed.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dimstudy.bench.timing import DTYPES, time_fn
from dimstudy.flops import forward_with_hooks
from dimstudy.ops.mixers import is_mixer
from dimstudy.results import environment
from dimstudy.runtime import resolve_device


# -- measured rates --------------------------------------------------------------------------------------
def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, warmup: int = 3, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: torch.mm(a, b, out=out), device, warmup=warmup, repeats=repeats, budget_s=None)
    return 2 * n**3 / (t.median_ms * 1e-3) / 1e12


def measure_copy_gbps(device: torch.device, nbytes: int, warmup: int = 3, repeats: int = 10) -> float:
    src = torch.randn(nbytes // 4, device=device)  # float32 elements
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=warmup, repeats=repeats, budget_s=None)
    return 2 * src.numel() * 4 / (t.median_ms * 1e-3) / 1e9  # read + write


def measure_device(device: str = "auto", dtype: str = "bf16", n: int | None = None, nbytes: int | None = None) -> dict:
    """Worker target (run it through `run_isolated`): this device's matmul rate and copy bandwidth.

    Sizes default to 8192^3 and 1 GiB on CUDA, 512^3 and 32 MiB on CPU (where the rates only make
    tiny test sweeps self-consistent).
    """
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    n = n or (8192 if cuda else 512)
    nbytes = nbytes or (2**30 if cuda else 2**25)
    torch.manual_seed(0)

    return {
        **environment(dev),
        "matmul_tflops": measure_matmul_tflops(dev, DTYPES[dtype], n),
        "matmul_n": n,
        "copy_gbps": measure_copy_gbps(dev, nbytes),
        "copy_bytes": nbytes,
        "rates_dtype": dtype,
    }


# -- minimum bytes and the floor -------------------------------------------------------------------------
def _layers(model: nn.Module) -> list[nn.Module]:
    composites = [m for m in model.modules() if is_mixer(m)]
    inside = {id(c) for m in composites for c in m.modules() if c is not m}
    owners = [
        m for m in model.modules()
        if id(m) not in inside and not is_mixer(m) and any(True for _ in m.parameters(recurse=False))
        and m is not model  # the model's own free parameters (pos-embed, pad tokens) are weights, not a layer
    ]
    return composites + owners


def min_bytes(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, width: int) -> float:
    """Bytes one forward of model(x, t, y) cannot avoid moving, counted as the module docstring says.

    Runs a forward with hooks; on a meta-device model (dimstudy.flops.build_on_meta) it costs nothing.
    """
    total = float(sum(p.numel() for p in model.parameters()) * width)

    def nbytes(v) -> float:
        if not isinstance(v, torch.Tensor):
            return 0.0
        return float(v.numel() * (width if v.is_floating_point() else v.element_size()))

    def hook(m, inp, out):
        nonlocal total
        total += (nbytes(inp[0]) if inp else 0.0) + nbytes(out)

    forward_with_hooks(model, [(m, hook) for m in _layers(model)], x, t, y)
    return total


def floor(flops: float, nbytes: float, matmul_tflops: float | None, copy_gbps: float | None) -> dict:
    """Compute time + memory time, in ms, from measured rates; Nones when a rate is missing."""
    if not matmul_tflops or not copy_gbps:
        return {"floor_compute_ms": None, "floor_memory_ms": None, "floor_ms": None}
    compute = flops / (matmul_tflops * 1e12) * 1e3
    memory = nbytes / (copy_gbps * 1e9) * 1e3
    return {"floor_compute_ms": compute, "floor_memory_ms": memory, "floor_ms": compute + memory}
