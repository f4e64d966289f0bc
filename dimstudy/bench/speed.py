"""Inference (and training) speed across resolutions: the measurement behind the paper's Fig. 3.

Fig. 3 of the paper plots log10(iterations / ms) against resolution for DiM-H/2, U-ViT and a plain
Mamba baseline (about 0.9B parameters each, patch 2) on one H800 (Sec. 4.2). Here one *iteration* is
one denoising step: one network forward under `torch.no_grad()` (`mode="infer"`); `mode="train"` times
forward + backward + AdamW step instead.

A sweep (`run_sweep`) walks models x batch sizes x resolutions (ascending). For each point the parent
counts parameters, tokens, MACs and minimum bytes on the meta device (so even rows of points that ran
out of memory say how big they were), then `run_isolated` runs `measure_point` in a fresh process,
which builds the model on the GPU, warms up and times it by the protocol in `timing.py`. The rates the
row is judged against (matmul TFLOP/s, copy GB/s) are measured once per sweep, in a worker of their own,
on the same GPU. Every row is appended to the results table `speed` as soon as it exists, so Ctrl-C or
a crash never loses a finished point.

Precision: `bf16`/`fp16` inference runs weights cast to that dtype *and* autocast (autocast only catches
the few float32 tensors the models make themselves, e.g. sinusoidal embeddings; with the weights
already cast it adds no per-forward weight copies). Training keeps float32 master weights under
autocast, the usual mixed precision. Each row says which in `precision`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import uuid
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dimstudy.bench.roofline import floor, min_bytes
from dimstudy.bench.timing import (
    DTYPES,
    STATUSES,
    peak_memory_gib,
    reset_peak_memory,
    run_isolated,
    time_fn,
)
from dimstudy.models.compile import check_compile_scope, compile_network, repeated_blocks
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.runtime import resolve_device

TABLE = "speed"
ALIASES = {"dim": "dim_h_2", "uvit": "uvit_900m_2", "mamba": "mamba_900m_2"}  # the paper's Fig. 3 trio
DEFAULT_RESOLUTIONS = (256, 512, 768, 1024, 1280, 1536, 2048)
LATENT_FACTOR = 8  # SD-VAE: a res x res image is a 4 x res/8 x res/8 latent
MODES = ("infer", "train")
INJECT = ("oom", "error", "crash")  # test hooks: raise CUDA OOM / raise an error / die without a row


@dataclass
class SpeedConfig:
    """One sweep; mirrors `dimstudy speed`'s options. What defines a point (dtype, mode, compile, cuda_graphs,
    seed, warmup, repeats -> repeats_max, budget_s, the requested backends) is a column of every row."""

    models: list[str] = field(default_factory=lambda: ["dim", "uvit", "mamba"])
    resolutions: list[int] = field(default_factory=lambda: list(DEFAULT_RESOLUTIONS))
    batches: list[int] = field(default_factory=lambda: [1, 8])
    dtype: str = "bf16"
    mode: str = "infer"
    compile: bool = False
    # with compile: "blocks" (each repeated block compiled once and shared) or "model" (one graph); None: blocks,
    # which measured within 2.3% of the whole-model compile, DiM-H/2 compiling 7-8x faster (results/speed-triton-blocks/)
    compile_scope: str | None = None
    cuda_graphs: bool = False
    warmup: int = 10
    repeats: int = 30
    budget_s: float = 10.0  # cap on the timed repeats of one point (timing.time_fn)
    timeout_s: float = 600.0  # per point, process start and model build included
    seed: int = 0
    device: str = "auto"
    scan_backend: str | None = None  # None: the preset's default ("auto")
    attn_backend: str | None = None
    skip_after_oom: bool = True  # a larger resolution at the same model and batch is not tried after an OOM
    measure_rates: bool = True
    results: str | None = None  # results root; None: dimstudy.results.DEFAULT_ROOT
    sweep: str | None = None  # continue this sweep id: points it already has rows for are not run again
    inject: dict[str, str] = field(default_factory=dict)  # "resolution" -> one of INJECT (tests only)


# -- what a point is ---------------------------------------------------------------------------------------
def resolve_model(name: str) -> str:
    from dimstudy.models.registry import list_models

    if name in ALIASES:
        return ALIASES[name]
    if name in list_models():
        return name
    valid = [f"{a} (={m})" for a, m in ALIASES.items()] + list_models()
    raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(valid)}")


def model_overrides(model: str, scan_backend: str | None, attn_backend: str | None) -> dict:
    """The backend override that applies to this model's family (the other one would be an error)."""
    from dimstudy.models.registry import get_entry

    fam = get_entry(model).family
    return {"attn_backend": attn_backend} if fam == "uvit" else {"scan_backend": scan_backend}


def input_shape(model, resolution: int, name: str = "") -> tuple[int, int, int]:
    """(C, H, W) of the network input for an image of `resolution` px: latent models see res/8."""
    p = model.patch_size
    if model.in_chans == 4:  # a latent preset: SD-VAE latents, 8x smaller per side
        if resolution % (LATENT_FACTOR * p):
            raise ValueError(
                f"resolution {resolution} is not divisible by {LATENT_FACTOR * p} (8 x patch {p}) for latent model "
                f"{name or type(model).__name__}; valid choices are multiples of {LATENT_FACTOR * p}, e.g. 256, 512, 1024"
            )
        side = resolution // LATENT_FACTOR
        return 4, side, side
    if resolution % p:
        raise ValueError(f"resolution {resolution} is not divisible by the patch size {p} of {name}")
    return model.in_chans, resolution, resolution


def make_inputs(model, shape: tuple[int, int, int], batch: int, device, dtype=torch.float32):
    """Random inputs, never zeros: x ~ N(0, 1), t ~ U{0..999}, y ~ U{classes} (None if unconditional)."""
    x = torch.randn(batch, *shape, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device=device).float()
    y = torch.randint(0, model.num_classes, (batch,), device=device) if model.num_classes else None
    return x, t, y


def static_counts(model_name: str, resolution: int, batch: int, dtype: str, overrides: dict) -> dict:
    """Sizes of one point from a meta-device build: params, tokens, MACs by kind, minimum bytes."""
    from dimstudy.flops import build_on_meta, count_flops, count_params
    from dimstudy.models.registry import get_entry

    model = build_on_meta(model_name, **overrides)
    shape = input_shape(model, resolution, model_name)
    x, t, y = make_inputs(model, shape, batch, "meta")
    fl = count_flops(model, x, t, y)
    width = DTYPES[dtype].itemsize
    row = {
        "family": get_entry(model_name).family,
        "input_shape": "x".join(map(str, shape)),
        "tokens": model.sequence_length(shape[-1]),
        "params": count_params(model),
        "macs": fl.macs,  # one forward at this batch
        "gflops": fl.macs / batch / 1e9,  # per image, the paper's "GFLOPs" (MACs) convention
        "min_bytes": min_bytes(model, x, t, y, width),
    }
    row.update({f"macs_{k}": fl.by_kind.get(k, 0.0) for k in ("gemm", "conv", "scan", "attention")})
    return row


# -- the worker: one point, timed in its own process --------------------------------------------------------
def _autocast(device: torch.device, dtype: str, cache: bool = True):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype], cache_enabled=cache)


def build_step(model, x, t, y, device: torch.device, dtype: str, mode: str, cuda_graphs: bool):
    """The callable one iteration is; the model is already on `device` (and cast, for inference)."""
    if mode == "train":
        target = torch.randn_like(x)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def train_step():
            with _autocast(device, dtype):
                loss = F.mse_loss(model(x, t, y).float(), target.float())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return train_step

    def forward():
        # autocast's weight cache must be off inside a CUDA-graph capture (weights are cast anyway)
        with torch.no_grad(), _autocast(device, dtype, cache=not cuda_graphs):
            return model(x, t, y)

    if not cuda_graphs:
        return forward
    # Capture one forward; timing then replays it (static x, t, y: the replay reads the same buffers).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA-graphs docs ask
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def prepare(model: str, resolution: int, batch: int, dtype: str, mode: str, device: torch.device,
            overrides: dict | None = None, seed: int = 0):
    """A seeded model on `device` and random inputs for one point: (net, x, t, y).

    Inference: eval mode, weights cast to `dtype`, x in `dtype`. Training: float32 weights and x
    (autocast does the rest), train mode.
    """
    from dimstudy.models.registry import create_model

    torch.manual_seed(seed)
    with torch.device(device):  # initialise straight on the GPU: 0.9B params in seconds, not minutes
        net = create_model(model, **(overrides or {}))
    if mode == "infer":
        net.eval()
        if dtype != "fp32":
            net.to(DTYPES[dtype])
    else:
        net.train()
    shape = input_shape(net, resolution, model)
    x, t, y = make_inputs(net, shape, batch, device, DTYPES[dtype] if mode == "infer" else torch.float32)
    return net, x, t, y


DEFAULT_COMPILE_SCOPE = "blocks"


def scope_of(cfg: SpeedConfig) -> str:
    """The compile scope a sweep's points use (meaningful with cfg.compile): the one asked for, else blocks."""
    return cfg.compile_scope or DEFAULT_COMPILE_SCOPE


def measure_point(
    model: str, resolution: int, batch: int, dtype: str = "bf16", mode: str = "infer", compile: bool = False,
    compile_scope: str = DEFAULT_COMPILE_SCOPE, cuda_graphs: bool = False, warmup: int = 10, repeats: int = 30, budget_s: float | None = 10.0, seed: int = 0,
    device: str = "auto", overrides: dict | None = None, inject: str | None = None,
) -> dict:
    """Worker target: build, warm up and time one (model, resolution, batch); returns the measured fields."""
    import time

    from dimstudy.results import environment

    dev = resolve_device(device)
    if inject == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. (injected by the test hook)")
    if inject == "error":
        raise RuntimeError("injected failure (test hook)")
    if inject == "crash":
        os._exit(3)  # dies without a row, as a segfault or an abort would
    if cuda_graphs and (dev.type != "cuda" or mode != "infer"):
        raise ValueError("--cuda-graphs needs a CUDA device and --mode infer")
    net, x, t, y = prepare(model, resolution, batch, dtype, mode, dev, overrides, seed)
    reset_peak_memory(dev)  # the peak then covers resident weights + this point's work, not the fp32 init before the cast
    weights_gib = torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    run = compile_network(net, compile_scope) if compile else net

    t0 = time.perf_counter()
    step = build_step(run, x, t, y, dev, dtype, mode, cuda_graphs)
    step()  # the first call pays for compilation and kernel loading: reported, not timed
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    first_call_s = time.perf_counter() - t0
    timing = time_fn(step, dev, warmup=warmup, repeats=repeats, budget_s=budget_s)
    return {
        **timing.as_row(),
        "first_call_s": first_call_s,
        "peak_mem_gib": peak_memory_gib(dev),
        "weights_mem_gib": weights_gib,
        **kernels_that_ran(net),
        **environment(dev),  # the process that ran it says where it ran
    }


# -- the parent: a sweep ------------------------------------------------------------------------------------
ENV_KEYS = ("device", "gpu", "cpu", "torch", "cuda", "python", "git_sha", "timestamp")
ROW_KEYS = [
    # what was asked
    "sweep", "model", "alias", "family", "resolution", "batch", "dtype", "mode", "precision", "compile",
    "compile_scope", "cuda_graphs", "seed", "warmup", "repeats", "repeats_max", "budget_s", "scan_backend_requested", "attn_backend_requested",
    # how big
    "input_shape", "tokens", "params", "macs", "gflops", "macs_gemm", "macs_conv", "macs_scan", "macs_attention",
    "flops_per_iter", "min_bytes",
    # what happened
    "status", "error", "worker_pid",
    "ms", "ms_q1", "ms_q3", "ms_iqr", "ms_min", "ms_max", "it_per_ms", "log10_it_per_ms", "images_per_s",
    "first_call_s", "peak_mem_gib", "weights_mem_gib", "scan_backend", "attn_backend", "fused",
    # judged against this GPU
    "achieved_tflops", "matmul_tflops", "frac_of_matmul", "copy_gbps",
    "floor_compute_ms", "floor_memory_ms", "floor_ms", "ms_over_floor",
    # where it ran (dimstudy.results.environment, as the worker saw it)
    *ENV_KEYS,
]


def precision_of(dtype: str, mode: str) -> str:
    if dtype == "fp32":
        return "fp32"
    return f"{dtype} weights + autocast" if mode == "infer" else f"fp32 weights + {dtype} autocast"


def derive(row: dict, rates: dict | None) -> dict:
    """Fill the numbers that follow from the measured median and the sweep's measured rates."""
    ms, rates = row.get("ms"), rates or {}
    passes = 3 if row["mode"] == "train" else 1  # backward ~ 2 x forward
    row["flops_per_iter"] = 2 * row["macs"] * passes if row.get("macs") is not None else None
    row["matmul_tflops"], row["copy_gbps"] = rates.get("matmul_tflops"), rates.get("copy_gbps")
    fl = floor(row["flops_per_iter"] or 0, (row.get("min_bytes") or 0) * passes, row["matmul_tflops"], row["copy_gbps"])
    row.update(fl)
    if ms:
        row["it_per_ms"] = 1.0 / ms
        row["log10_it_per_ms"] = -math.log10(ms)
        row["images_per_s"] = row["batch"] * 1e3 / ms
        row["achieved_tflops"] = row["flops_per_iter"] / (ms * 1e-3) / 1e12 if row["flops_per_iter"] else None
        if row["achieved_tflops"] is not None and row["matmul_tflops"]:
            row["frac_of_matmul"] = row["achieved_tflops"] / row["matmul_tflops"]
        if fl["floor_ms"]:
            row["ms_over_floor"] = ms / fl["floor_ms"]
    return row


def complete(row: dict) -> dict:
    """Every documented key, in order (None where not measured); extra keys kept after them."""
    return {**{k: row.get(k) for k in ROW_KEYS}, **{k: v for k, v in row.items() if k not in ROW_KEYS}}


def validate(cfg: SpeedConfig) -> list[tuple[str, str, int, int]]:
    """Check every option before anything runs; returns the points (alias, model, resolution, batch)."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; valid choices: {', '.join(DTYPES)}")
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; valid choices: {', '.join(MODES)}")
    if not cfg.models or not cfg.resolutions or not cfg.batches:
        raise ValueError("give at least one model, one resolution and one batch size")
    if any(b < 1 for b in cfg.batches) or any(r < 1 for r in cfg.resolutions):
        raise ValueError("batch sizes and resolutions must be positive integers")
    if cfg.cuda_graphs and cfg.mode != "infer":
        raise ValueError("--cuda-graphs times captured forward passes; use it with --mode infer")
    if cfg.compile_scope is not None:
        check_compile_scope(cfg.compile_scope)
        if not cfg.compile:
            raise ValueError("--compile-scope says what --compile compiles; add --compile")
    dev = resolve_device(cfg.device)
    if cfg.cuda_graphs and dev.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device")
    from dimstudy.flops import build_on_meta

    points = []
    for alias in cfg.models:
        model = resolve_model(alias)
        meta = build_on_meta(model, **model_overrides(model, cfg.scan_backend, cfg.attn_backend))
        for r in cfg.resolutions:
            input_shape(meta, r, model)  # raises the one-line error for a resolution this model cannot take
        if cfg.compile and scope_of(cfg) == "blocks" and not repeated_blocks(meta):
            raise ValueError(f"{model} has no repeated blocks to compile one by one; use --compile-scope model")
        points += [(alias, model, r, b) for b in cfg.batches for r in sorted(cfg.resolutions)]
    return points


def new_sweep_id() -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def run_sweep(cfg: SpeedConfig, progress: bool = True, echo=None) -> list[dict]:
    """Measure every point of `cfg`, one process each; append each row to the `speed` table as it lands."""
    from tqdm import tqdm

    from dimstudy.results import append_row, environment, read_table

    points = validate(cfg)
    dev = resolve_device(cfg.device)
    sweep = cfg.sweep or new_sweep_id()
    if cfg.sweep:  # an interrupted sweep goes on where it stopped; finished points are never redone
        have = read_table(TABLE, cfg.results)
        have = have[have["sweep"] == cfg.sweep] if "sweep" in have else have.iloc[:0]
        done = set(zip(have.get("model", []), have.get("resolution", []), have.get("batch", []), strict=True))
        points = [p for p in points if (p[1], p[2], p[3]) not in done]
    say = echo or (lambda msg: None)
    rates = {}
    if cfg.measure_rates:  # once per sweep, same GPU, own process
        rates = run_isolated("dimstudy.bench.roofline:measure_device", {"device": str(dev), "dtype": cfg.dtype}, cfg.timeout_s)
        if rates.get("status") != "ok":
            say(f"warning: measuring the device failed ({rates.get('error')}); rows get no MFU or floor")
            rates = {}
        else:
            say(f"device: {rates['matmul_tflops']:.0f} TFLOP/s {cfg.dtype} matmul (n={rates['matmul_n']}), "
                 f"{rates['copy_gbps']:.0f} GB/s copy (read+write)")
    # Rows whose worker died carry the environment the rates worker saw (the parent never touches CUDA,
    # so it holds no context - and no GPU memory - while the points run).
    env = {k: rates[k] for k in ENV_KEYS if k in rates} or {**environment("cpu"), "device": dev.type, "gpu": None}
    rows, oom_at = [], {}
    bar = tqdm(points, disable=not progress, unit="pt", dynamic_ncols=True)
    for alias, model, res, batch in bar:
        bar.set_description(f"{alias} {res}px b{batch}")
        overrides = model_overrides(model, cfg.scan_backend, cfg.attn_backend)
        base = {
            "sweep": sweep, "model": model, "alias": alias, "resolution": res, "batch": batch, "dtype": cfg.dtype,
            "mode": cfg.mode, "precision": precision_of(cfg.dtype, cfg.mode), "compile": cfg.compile,
            "compile_scope": scope_of(cfg) if cfg.compile else None, "cuda_graphs": cfg.cuda_graphs, "seed": cfg.seed, "warmup": cfg.warmup, "budget_s": cfg.budget_s,
            "repeats_max": cfg.repeats, "scan_backend_requested": cfg.scan_backend,
            "attn_backend_requested": cfg.attn_backend, **static_counts(model, res, batch, cfg.dtype, overrides), **env,
        }
        if cfg.skip_after_oom and oom_at.get((model, batch), res + 1) < res:
            measured = {"status": "skipped", "error": f"not run: {oom_at[(model, batch)]} px already ran out of memory"}
        else:
            kwargs = dict(
                model=model, resolution=res, batch=batch, dtype=cfg.dtype, mode=cfg.mode, compile=cfg.compile,
                compile_scope=scope_of(cfg), cuda_graphs=cfg.cuda_graphs, warmup=cfg.warmup, repeats=cfg.repeats, budget_s=cfg.budget_s,
                seed=cfg.seed, device=str(dev), overrides=overrides, inject=cfg.inject.get(str(res)),
            )
            measured = run_isolated("dimstudy.bench.speed:measure_point", kwargs, cfg.timeout_s)
        if measured.get("status") == "oom":
            oom_at.setdefault((model, batch), res)
        row = complete(derive({**base, **measured}, rates))
        if "timestamp" not in measured:
            row["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        append_row(TABLE, row, cfg.results)
        rows.append(row)
        bar.set_postfix_str(f"{row['ms']:.1f} ms" if row["status"] == "ok" else row["status"])
    return rows


def check_row(row: dict) -> None:
    """The schema every `speed` row satisfies (used by the tests and worth running on loaded rows)."""
    missing = [k for k in ROW_KEYS if k not in row]
    assert not missing, f"missing keys: {missing}"
    assert row["status"] in STATUSES, row["status"]
    if row["status"] == "ok":
        for k in ("ms", "ms_q1", "ms_q3", "it_per_ms", "log10_it_per_ms", "images_per_s", "first_call_s"):
            assert isinstance(row[k], float) and row[k] == row[k], (k, row[k])
        assert row["ms_min"] <= row["ms_q1"] <= row["ms"] <= row["ms_q3"] <= row["ms_max"]
    for k in ("resolution", "batch", "tokens", "params", "worker_pid"):
        assert row[k] is None or isinstance(row[k], int), (k, row[k])
