"""Where one forward's time goes: GEMMs, the scan, the conv, DiM's permutations and pads, norms, attention.

Method (no model code is changed; everything below is undone when profiling ends):

1. **Ranges from modules.** A forward pre-hook on every module opens a `torch.profiler.record_function`
   range named `dimstudy|<kind>|<qualified name>` and a forward hook closes it, so every op the module's
   own `forward` runs is nested inside its range. `kind` comes from the module's class (`module_kind`):
   linear, conv1d, conv2d, norm, attention, mixer (a Mamba), embedding, act (parameter-free leaves),
   block (a module with a mixer or attention child), root, container.
2. **Ranges from scan functions.** The selective-scan functions that the Mamba mixer looks up by name at
   call time (`dimstudy.ops.selective_scan.selective_scan_{fn,torch,ref}`) and causal-conv1d's
   `causal_conv1d_fn` (as `dimstudy.ops.mamba` holds it) are wrapped in a range of kind scan / conv1d.
   mamba-ssm's fused `mamba_inner_fn` runs projections, conv and scan in one call, so inside it the
   kernel name decides (step 4).
3. **Time to ranges.** On CUDA, every kernel (and memcpy/memset) event's device time is found through its
   launch: the CUDA runtime event with the same correlation id (`cudaLaunchKernel`, ...) sits inside the
   CPU op that launched it, and `cpu_parent` links lead up through the ops to the innermost dimstudy
   range. (A kernel with no runtime event falls back to `linked_correlation_id`, the op the profiler
   itself linked it to.) On CPU, each op's self CPU time is used instead, through the same tree.
4. **Category.** `classify(kind, ops, kernel)` maps the innermost range's kind, the aten ops between it
   and the launch (e.g. aten::linear > aten::addmm) and the kernel name to one of `CATEGORIES`. Module
   kind decides first; op names (stable across versions) second; kernel names only inside composite
   calls (mamba_inner_fn: `selective_scan`, `causal_conv1d`, GEMM libraries' names).

The table also shows `idle`: the timed median (measured by `timing.time_fn`, hooks off) minus the kernel
time, i.e. launch gaps when the GPU waits for the host. Exact for the fused CUDA path; on the PyTorch
scan backends the scan's own work is still found through the wrapped scan functions.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict

import torch
import torch.nn as nn

from dimstudy.bench.timing import DTYPES, time_fn
from dimstudy.ops.attention import Attention
from dimstudy.ops.mixers import is_mixer, kernels_that_ran
from dimstudy.runtime import resolve_device

PREFIX = "dimstudy|"
CATEGORIES = {
    "gemm": "GEMMs: in/x/dt/out projections, skip and adaLN linears, U-ViT qkv/proj/MLP, head",
    "selective_scan": "the selective scan (discretisation, recurrence, readout, gate)",
    "causal_conv": "the Mamba mixer's causal depthwise conv1d",
    "mixer_other": "other work inside Mamba mixers (layout copies, casts, small elementwise)",
    "attention": "attention core: QK^T, softmax, AV and its layout copies",
    "permute_pad": "scan-pattern gathers, pad/extra-token concatenation and un-padding",
    "norm_adaln": "norms, adaLN modulation and gating, residual adds",
    "conv2d": "patch embedding, DiM's depthwise 3x3 convs, U-ViT's final conv",
    "other": "embeddings, activations, long-skip concat, head reshuffles, everything else",
    "idle": "timed wall time not covered by kernels (launch gaps / host overhead)",
}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::_scaled_mm"}
GATHER_OPS = {"aten::index_select", "aten::gather", "aten::take", "aten::index", "aten::flip", "aten::roll"}
LAYOUT_OPS = {
    "aten::cat", "aten::stack", "aten::pad", "aten::constant_pad_nd", "aten::copy_", "aten::clone",
    "aten::contiguous", "aten::_to_copy", "aten::to", "aten::reshape", "aten::slice", "aten::narrow",
}
GEMM_KERNEL = re.compile(r"gemm|cutlass|cublas|nvjet|xmma|wgmma|s16816|sm90_|sm80_", re.I)
RUNTIME = re.compile(r"^cu(da)?[A-Z]")  # CUDA runtime / driver API events: cudaLaunchKernel, cuLaunchKernelEx ...


# -- ranges -------------------------------------------------------------------------------------------------
def module_kind(m: nn.Module, is_root: bool = False) -> str:
    if is_root:
        return "root"
    if isinstance(m, Attention):
        return "attention"
    if is_mixer(m):
        return "mixer"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Conv1d):
        return "conv1d"
    if isinstance(m, nn.Conv2d):
        return "conv2d"
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "norm" in type(m).__name__.lower():
        return "norm"
    if isinstance(m, nn.Embedding):
        return "embedding"
    if any(is_mixer(c) for c in m.children()):
        return "block"
    if not any(True for _ in m.children()):
        return "act"  # SiLU, GELU, Identity, Dropout: parameter-free leaves
    if any(module_kind(c) == "norm" for c in m.children()):
        return "normed"  # e.g. the adaLN head: its own elementwise work is modulation
    return "container"


def _enter(name: str):
    rf = torch.profiler.record_function(name)
    rf.__enter__()
    return rf


@contextlib.contextmanager
def module_ranges(model: nn.Module):
    """Every module's forward inside a `dimstudy|kind|name` range, and the scan functions wrapped; undone on exit."""
    import importlib

    # import_module, not `import a.b as m`: dimstudy.ops re-exports a *function* named selective_scan,
    # which shadows the submodule of the same name as a package attribute.
    ss = importlib.import_module("dimstudy.ops.selective_scan")
    mamba_mod = importlib.import_module("dimstudy.ops.mamba")

    open_ranges: dict[int, list] = defaultdict(list)
    handles = []
    for name, m in model.named_modules():
        label = f"{PREFIX}{module_kind(m, m is model)}|{name or 'model'}"

        def pre(mod, args, label=label):
            open_ranges[id(mod)].append(_enter(label))

        def post(mod, args, out):
            if open_ranges[id(mod)]:
                open_ranges[id(mod)].pop().__exit__(None, None, None)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def wrap(fn, label):
        def wrapped(*a, **k):
            with torch.profiler.record_function(label):
                return fn(*a, **k)
        return wrapped

    patched = []
    for mod, attr, kind in [(ss, "selective_scan_fn", "scan"), (ss, "selective_scan_torch", "scan"),
                            (ss, "selective_scan_ref", "scan"), (mamba_mod, "causal_conv1d_fn", "conv1d")]:
        fn = getattr(mod, attr, None)
        if fn is not None:
            patched.append((mod, attr, fn))
            setattr(mod, attr, wrap(fn, f"{PREFIX}{kind}|{attr}"))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for mod, attr, fn in patched:
            setattr(mod, attr, fn)


# -- attribution --------------------------------------------------------------------------------------------
def classify(kind: str, ops: list[str], kernel: str = "") -> str:
    """Category of one piece of time: innermost range kind, the ops below it (innermost first), kernel name."""
    opset = set(ops)
    names = " ".join([kernel, *ops]).lower()
    gemm = bool(opset & GEMM_OPS) or bool(GEMM_KERNEL.search(kernel))
    conv = "conv" in names
    direct = {"linear": "gemm", "conv1d": "causal_conv", "conv2d": "conv2d", "norm": "norm_adaln",
              "attention": "attention", "scan": "selective_scan", "embedding": "other", "act": "other"}
    if kind in direct:
        return direct[kind]
    if kind == "mixer":  # mamba_inner_fn and the mixer's own code: names decide
        if "selective_scan" in names:
            return "selective_scan"
        if "causal_conv1d" in names or conv:
            return "causal_conv"
        return "gemm" if gemm else "mixer_other"
    if gemm:
        return "gemm"
    if conv:
        return "conv2d"
    if opset & GATHER_OPS:
        return "permute_pad"
    if kind == "block":  # DiMBlock / UViTBlock's own code: gather (above), skip concat, modulation, residual
        return "other" if "aten::cat" in opset else "norm_adaln"
    if kind == "root":  # the model's forward: token/pad concatenation, the final re-order, dropping the pads
        return "permute_pad" if opset & LAYOUT_OPS else "other"
    if kind == "normed":
        return "norm_adaln"
    return "other"


def _chain(evt) -> tuple[str, list[str], str]:
    """From a CPU event up: (innermost dimstudy kind, op names below it innermost first, range label)."""
    ops = []
    while evt is not None:
        if evt.name.startswith(PREFIX):
            return evt.name.split("|")[1], ops, evt.name
        if not RUNTIME.match(evt.name):
            ops.append(evt.name)
        evt = evt.cpu_parent
    return "container", ops, ""


class _Enclosing:
    """The innermost CPU op or range enclosing a host timestamp, for launches the profiler left unparented
    (a kernel launched straight from a C++ extension under a user range may carry no op correlation)."""

    def __init__(self, cpu_events):
        self.events = sorted(cpu_events, key=lambda e: e.time_range.start)
        self.starts = [e.time_range.start for e in self.events]

    def at(self, when: float):
        import bisect

        for i in range(bisect.bisect_right(self.starts, when) - 1, -1, -1):
            if self.events[i].time_range.end >= when:
                return self.events[i]  # latest start among the enclosing ones: the innermost
        return None


def attribute(events, use_cuda: bool) -> list[dict]:
    """One record per kernel (CUDA) or per op (CPU): category, kind, range, op, kernel, us."""
    from torch.autograd import DeviceType

    out = []
    if use_cuda:
        cpu = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
        runtime = {e.id: e for e in cpu if RUNTIME.match(e.name)}
        ops = [e for e in cpu if not RUNTIME.match(e.name)]
        ops_by_id = {e.id: e for e in ops}
        enclosing = None
        for e in events:
            if e.device_type != DeviceType.CUDA or _is_annotation(e):
                continue
            launch = runtime.get(e.id)
            if launch is not None:
                start = launch.cpu_parent
                if start is None:
                    if enclosing is None:
                        main = _range_thread(ops)
                        enclosing = _Enclosing([o for o in ops if o.thread == main])
                    start = enclosing.at(launch.time_range.start)
            else:
                start = ops_by_id.get(getattr(e, "linked_correlation_id", 0) or -1)
            kind, chain, label = _chain(start)
            out.append(dict(category=classify(kind, chain, e.name), kind=kind, range=label,
                            op=chain[-1] if chain else "", kernel=e.name, us=e.time_range.end - e.time_range.start))
    else:
        for e in events:
            if e.device_type != DeviceType.CPU or e.name.startswith(PREFIX) or e.self_cpu_time_total <= 0:
                continue
            kind, chain, label = _chain(e.cpu_parent)
            chain = [e.name, *chain]
            out.append(dict(category=classify(kind, chain), kind=kind, range=label, op=chain[-1], kernel=e.name,
                            us=e.self_cpu_time_total))
    return out


def _is_annotation(e) -> bool:
    """GPU-side copies of record_function ranges (kineto's gpu_user_annotation): spans, not kernels."""
    return (e.name.startswith(PREFIX) or bool(getattr(e, "is_user_annotation", False))
            or getattr(e, "activity_type", "") == "gpu_user_annotation")


def _range_thread(ops) -> int | None:
    """The thread our module ranges ran on (the Python thread that called forward)."""
    return next((o.thread for o in ops if o.name.startswith(PREFIX)), None)


# -- the worker ---------------------------------------------------------------------------------------------
def profile_point(
    model: str, resolution: int, batch: int = 1, dtype: str = "bf16", warmup: int = 5, repeats: int = 20,
    prof_iters: int = 3, seed: int = 0, device: str = "auto", overrides: dict | None = None, top: int = 12,
) -> dict:
    """Worker target: time one forward (protocol of timing.py), then profile `prof_iters` forwards with ranges.

    Returns ms and share per category (per forward), the timed median, and the `top` costliest
    (category, range, op, kernel) lines so the classification can be checked by eye.
    """
    from dimstudy.bench.speed import build_step, prepare
    from dimstudy.results import environment

    dev = resolve_device(device)
    net, x, t, y = prepare(model, resolution, batch, dtype, "infer", dev, overrides, seed)
    forward = build_step(net, x, t, y, dev, dtype, "infer", cuda_graphs=False)  # the forward `speed` times
    timing = time_fn(forward, dev, warmup=warmup, repeats=repeats)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with module_ranges(net), torch.profiler.profile(activities=acts) as prof:
        for _ in range(prof_iters):
            forward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    recs = attribute(prof.events(), dev.type == "cuda")

    ms = dict.fromkeys(CATEGORIES, 0.0)
    for r in recs:
        ms[r["category"]] += r["us"] / 1e3 / prof_iters
    busy = sum(ms.values())
    ms["idle"] = max(0.0, timing.median_ms - busy)
    total = busy + ms["idle"]
    lines = defaultdict(float)  # summed over blocks: "out_blocks.11.attn" and "out_blocks.3.attn" -> "out_blocks.*.attn"
    for r in recs:
        rng = re.sub(r"\.\d+(?=\.|$)", ".*", r["range"].split("|")[-1])
        lines[(r["category"], rng, r["op"], r["kernel"][:90])] += r["us"] / 1e3 / prof_iters
    top_lines = sorted(lines.items(), key=lambda kv: -kv[1])[:top]
    return {
        "model": model, "resolution": resolution, "batch": batch, "dtype": dtype,
        **{f"ms_{c}": v for c, v in ms.items()},
        **{f"pct_{c}": 100 * v / total if total else 0.0 for c, v in ms.items()},
        "busy_ms": busy, "wall_ms": timing.median_ms, "wall_ms_iqr": timing.iqr_ms, "prof_iters": prof_iters,
        "time_source": "cuda kernels" if dev.type == "cuda" else "cpu self time",
        "top": [dict(category=c, range=rg, op=op, kernel=kn, ms=v) for (c, rg, op, kn), v in top_lines],
        **kernels_that_ran(net),
        **environment(dev),
    }


def run_profile(
    models: list[str], resolution: int = 1024, batch: int = 1, dtype: str = "bf16", device: str = "auto",
    warmup: int = 5, repeats: int = 20, prof_iters: int = 3, seed: int = 0, timeout_s: float = 600.0,
    results: str | None = None, scan_backend: str | None = None, attn_backend: str | None = None,
) -> list[dict]:
    """Profile each model in its own process and append one row per model to the table `profile`; returns the rows
    (`dimstudy.report.profile` renders them)."""
    from dimstudy.bench.speed import input_shape, model_overrides, resolve_model
    from dimstudy.bench.timing import run_isolated
    from dimstudy.flops import build_on_meta
    from dimstudy.results import append_row

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
    dev = resolve_device(device)
    names = [(alias, resolve_model(alias)) for alias in models]
    for _, name in names:  # all inputs checked before the first worker starts
        input_shape(build_on_meta(name, **model_overrides(name, scan_backend, attn_backend)), resolution, name)
    rows = []
    for alias, name in names:
        kwargs = dict(model=name, resolution=resolution, batch=batch, dtype=dtype, warmup=warmup, repeats=repeats,
                      prof_iters=prof_iters, seed=seed, device=str(dev),
                      overrides=model_overrides(name, scan_backend, attn_backend))
        row = run_isolated("dimstudy.bench.profile:profile_point", kwargs, timeout_s)
        row = {"model": name, "resolution": resolution, "batch": batch, "dtype": dtype, **row, "alias": alias}
        append_row("profile", row, results)
        rows.append(row)
    return rows
