"""The speed harness: one timing protocol, one process per point, failures as rows, Fig. 3's numbers.

Everything runs on CPU with the tiny presets; the sweeps go through the real subprocess path.
"""

import math
import os
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import typer
from typer.testing import CliRunner

from dimstudy.bench.profile import attribute, classify, module_ranges, profile_point
from dimstudy.bench.roofline import min_bytes
from dimstudy.bench.speed import ROW_KEYS, SpeedConfig, check_row, input_shape, run_sweep
from dimstudy.bench.timing import run_isolated, time_fn
from dimstudy.cli.speed import register
from dimstudy.flops import build_on_meta
from dimstudy.models.registry import create_model
from dimstudy.report.speed import crossover, overhead, plot_fig3, speed_summary_markdown
from dimstudy.results import read_table


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers inherit it: small CPU boxes stay responsive


def _cfg(tmp_path, **kw):
    base = dict(dtype="fp32", device="cpu", warmup=1, repeats=3, budget_s=2.0, timeout_s=120, results=str(tmp_path))
    return SpeedConfig(**{**base, **kw})


# -- the protocol ---------------------------------------------------------------------------------------------
def test_time_fn_reports_the_median_and_caps_repeats_by_the_budget():
    t = time_fn(lambda: time.sleep(0.02), "cpu", warmup=1, repeats=30, budget_s=0.1)
    assert t.repeats in (4, 5)  # 0.1 s / ~20 ms, between min_repeats=3 and repeats=30
    assert time_fn(lambda: None, "cpu", warmup=0, repeats=7, budget_s=None).repeats == 7
    assert t.min_ms <= t.q1_ms <= t.median_ms <= t.q3_ms <= t.max_ms
    assert 19 < t.median_ms < 60
    assert set(t.as_row()) == {"ms", "ms_q1", "ms_q3", "ms_iqr", "ms_min", "ms_max", "repeats", "warmup"}


def test_a_worker_past_its_timeout_becomes_a_row():
    row = run_isolated("subprocess:run", {"args": ["sleep", "30"]}, timeout_s=2)
    assert row["status"] == "timeout" and "killed" in row["error"] and row["worker_pid"] != os.getpid()


# -- a sweep through real worker processes --------------------------------------------------------------------
def test_sweep_rows_are_well_formed_and_each_point_ran_in_its_own_process(tmp_path):
    rows = run_sweep(_cfg(tmp_path, models=["dim_tiny_2"], resolutions=[16], batches=[1, 2], dtype="bf16"), progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        check_row(r)
        assert list(r)[: len(ROW_KEYS)] == ROW_KEYS
        assert r["model"] == "dim_tiny_2" and r["family"] == "dim" and r["input_shape"] == "3x16x16"
        assert r["tokens"] == 2 + 3 + (8 + 3) ** 2  # t, c, 3 separators, padded 11 x 11 grid
        assert r["scan_backend"] == "torch-chunked" and r["fused"] is False and r["attn_backend"] is None
        assert r["precision"] == "bf16 weights + autocast"
        assert math.isclose(r["log10_it_per_ms"], -math.log10(r["ms"]))
        assert math.isclose(r["images_per_s"], r["batch"] * 1e3 / r["ms"])
        assert r["flops_per_iter"] == 2 * r["macs"] and r["gflops"] == pytest.approx(r["macs"] / r["batch"] / 1e9)
        for k in ("matmul_tflops", "copy_gbps", "achieved_tflops", "frac_of_matmul", "floor_ms", "ms_over_floor"):
            assert isinstance(r[k], float) and r[k] > 0, k
        assert r["device"] == "cpu" and r["torch"] == torch.__version__ and r["git_sha"] and r["timestamp"]
    pids = {r["worker_pid"] for r in rows}
    assert len(pids) == 2 and os.getpid() not in pids  # one fresh process per point
    stored = read_table("speed", tmp_path)
    assert len(stored) == 2 and set(ROW_KEYS) <= set(stored.columns)
    assert rows[1]["macs"] == pytest.approx(2 * rows[0]["macs"])  # batch 2 does twice the work


def test_failed_points_become_rows_and_the_sweep_goes_on(tmp_path):
    cfg = _cfg(tmp_path, models=["uvit_tiny_2"], resolutions=[8, 16, 24, 32, 40], batches=[1], measure_rates=False,
               inject={"8": "error", "16": "crash", "32": "oom"})
    rows = run_sweep(cfg, progress=False)
    status = {r["resolution"]: r["status"] for r in rows}
    assert status == {8: "error", 16: "error", 24: "ok", 32: "oom", 40: "skipped"}
    by_res = {r["resolution"]: r for r in rows}
    assert "injected" in by_res[8]["error"]
    assert "exit 3" in by_res[16]["error"]  # died without a row: the parent still writes one
    assert "out of memory" in by_res[32]["error"].lower() and by_res[32]["ms"] is None
    assert "32 px already ran out of memory" in by_res[40]["error"]
    for r in rows:
        check_row(r)
        assert r["params"] > 0 and r["tokens"] > 0  # sizes are known even for points that failed
    assert len(read_table("speed", tmp_path)) == 5


# -- sizes ----------------------------------------------------------------------------------------------------
def test_latent_models_see_an_eighth_of_the_resolution_and_reject_the_rest():
    meta = build_on_meta("dim_h_2")
    assert input_shape(meta, 1024) == (4, 128, 128)
    with pytest.raises(ValueError, match="not divisible by 16"):
        input_shape(meta, 1000)
    assert input_shape(build_on_meta("uvit_tiny_2"), 24) == (3, 24, 24)


class _TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(4, 8), nn.Linear(8, 2), nn.GELU()

    def forward(self, x, t, y=None):
        return self.b(self.act(self.a(x)))


def test_min_bytes_counts_every_weight_once_and_every_layer_input_and_output():
    x = torch.randn(3, 5, 4)
    w = 2  # bf16 width
    params = 4 * 8 + 8 + 8 * 2 + 2
    io = (3 * 5 * 4 + 3 * 5 * 8) + (3 * 5 * 8 + 3 * 5 * 2)  # a: in + out, b: in + out; GELU is free
    assert min_bytes(_TwoLinears(), x, None, None, w) == (params + io) * w


# -- where the time goes --------------------------------------------------------------------------------------
def test_classify_by_range_kind_then_op_then_kernel_name():
    assert classify("linear", ["aten::addmm", "aten::linear"]) == "gemm"
    assert classify("mixer", ["aten::mm"], "nvjet_tst_128x256") == "gemm"
    assert classify("mixer", [], "void selective_scan_fwd_kernel<...>") == "selective_scan"
    assert classify("mixer", [], "void causal_conv1d_fwd_kernel<...>") == "causal_conv"
    assert classify("mixer", ["aten::copy_"], "elementwise_kernel") == "mixer_other"
    assert classify("block", ["aten::index_select"]) == "permute_pad"
    assert classify("block", ["aten::mul"]) == "norm_adaln"
    assert classify("block", ["aten::cat"]) == "other"  # the long-skip concat
    assert classify("root", ["aten::cat"]) == "permute_pad"
    assert classify("attention", ["aten::_flash_attention_forward"], "flash_fwd_kernel") == "attention"
    assert classify("scan", ["aten::exp"]) == "selective_scan"


def _evt(name, device="CPU", id=0, parent=None, start=0.0, end=1.0, thread=1, linked=0):
    from torch.autograd import DeviceType

    return SimpleNamespace(name=name, device_type=getattr(DeviceType, device), id=id, cpu_parent=parent,
                           time_range=SimpleNamespace(start=start, end=end), is_async=False, thread=thread,
                           linked_correlation_id=linked, self_cpu_time_total=0)


def test_cuda_kernels_are_attributed_through_their_launch_to_the_innermost_range():
    block = _evt("dimstudy|block|blocks.1", start=0, end=100)
    mixer = _evt("dimstudy|mixer|blocks.1.mixer", parent=block, start=10, end=90)
    gather = _evt("aten::index_select", id=501, parent=block, start=2, end=8)
    events = [
        block, mixer, gather,
        _evt("cudaLaunchKernel", id=7, parent=mixer, start=20, end=21),  # pybind launch straight under the range
        _evt("selective_scan_fwd_kernel", device="CUDA", id=7, start=0, end=250),
        _evt("cudaLaunchKernel", id=8, parent=gather, start=3, end=4),
        _evt("indexSelectLargeIndex", device="CUDA", id=8, start=0, end=40),
        _evt("cudaLaunchKernel", id=9, parent=None, start=50, end=51, thread=999),  # unparented: found by time
        _evt("void causal_conv1d_fwd_kernel", device="CUDA", id=9, start=0, end=30),
        _evt("dimstudy|mixer|blocks.1.mixer", device="CUDA", id=10, start=0, end=300),  # GPU copy of a range: no kernel
    ]
    recs = attribute(events, use_cuda=True)
    assert len(recs) == 3
    got = {r["kernel"]: (r["category"], r["range"]) for r in recs}
    assert got["selective_scan_fwd_kernel"] == ("selective_scan", "dimstudy|mixer|blocks.1.mixer")
    assert got["indexSelectLargeIndex"] == ("permute_pad", "dimstudy|block|blocks.1")
    assert got["void causal_conv1d_fwd_kernel"] == ("causal_conv", "dimstudy|mixer|blocks.1.mixer")


def test_profile_splits_a_forward_into_categories_and_leaves_the_model_untouched():
    import importlib

    ss = importlib.import_module("dimstudy.ops.selective_scan")
    before = ss.selective_scan_torch
    dim = profile_point("dim_tiny_2", 16, 1, "fp32", warmup=1, repeats=2, prof_iters=1, device="cpu")
    assert sum(dim[k] for k in dim if k.startswith("pct_")) == pytest.approx(100)
    for cat in ("gemm", "selective_scan", "causal_conv", "permute_pad", "norm_adaln", "conv2d"):
        assert dim[f"ms_{cat}"] > 0, cat
    assert dim["ms_attention"] == 0
    assert ss.selective_scan_torch is before  # the wrapped scan functions are restored
    uvit = profile_point("uvit_tiny_2", 16, 1, "fp32", warmup=1, repeats=2, prof_iters=1, device="cpu")
    assert uvit["ms_attention"] > 0 and uvit["ms_gemm"] > 0 and uvit["ms_selective_scan"] == 0

    net = create_model("uvit_tiny_2")
    with module_ranges(net):
        assert net._forward_pre_hooks
    assert not net._forward_pre_hooks and not net._forward_hooks


# -- the report -----------------------------------------------------------------------------------------------
def _frame(dim_ms, uvit_ms, mamba_ms, res=(256, 512, 1024, 2048), batch=1):
    rows = []
    for model, alias, fam, ms in [("dim_h_2", "dim", "dim", dim_ms), ("uvit_900m_2", "uvit", "uvit", uvit_ms),
                                  ("mamba_900m_2", "mamba", "mamba", mamba_ms)]:
        for r, m in zip(res, ms, strict=True):
            ok = m is not None
            rows.append(dict(model=model, alias=alias, family=fam, resolution=r, batch=batch, dtype="bf16",
                             mode="infer", status="ok" if ok else "oom", ms=m if ok else np.nan,
                             log10_it_per_ms=-math.log10(m) if ok else np.nan, gpu="NVIDIA H100 80GB HBM3",
                             floor_ms=np.nan))
    return pd.DataFrame(rows)


def test_crossover_interpolates_on_the_log_scale_and_says_none_outside_the_range():
    df = _frame([4, 8, 16, 32], [1, 4, 20, None], [3.6, 7.2, 14.4, 28.8])
    d0, d1 = math.log10(8 / 4), math.log10(16 / 20)
    assert crossover(df, "dim", "uvit", 1) == pytest.approx(512 + 512 * d0 / (d0 - d1))  # the OOM at 2048 is ignored
    assert crossover(_frame([4, 8, 16, 32], [1, 4, 16, 64], [1, 1, 1, 1]), "dim", "uvit") == 1024  # a measured tie
    assert crossover(_frame([4, 8, 16, 32], [1, 2, 4, 8], [1, 1, 1, 1]), "dim", "uvit") is None  # always slower
    assert crossover(_frame([1, 2, 4, 8], [4, 8, 16, 32], [1, 1, 1, 1]), "dim", "uvit") is None  # always faster
    assert crossover(df, "dim", "uvit", batch=8) is None  # no rows at that batch


def test_overhead_is_dims_extra_time_over_mamba_from_min_res():
    df = _frame([4, 8, 16, 32], [1, 4, 20, None], [3.6, 7.2, 14.4, 28.8])
    ov = overhead(df, batch=1, min_res=1024)
    assert list(ov["resolution"]) == [1024, 2048]
    assert ov["overhead_pct"].tolist() == pytest.approx([100 / 9, 100 / 9])
    with pytest.raises(ValueError, match="valid choices"):
        overhead(df, a="nope")
    with pytest.raises(ValueError, match="mix several dtype"):  # bf16 and fp32 rows are never compared
        overhead(pd.concat([df, df.assign(dtype="fp32")]))


def test_fig3_and_the_summary_are_written(tmp_path):
    df = _frame([4, 8, 16, 32], [1, 4, 20, None], [3.6, 7.2, 14.4, 28.8])
    df = pd.concat([df, _frame([9, 18, 36, 72], [3, 12, 60, None], [8, 16, 32, 64], batch=8)])
    path = plot_fig3(df, tmp_path / "fig3.png")
    assert path.exists() and path.stat().st_size > 10_000
    md = speed_summary_markdown(df)
    assert "paper (Fig. 3, H800)" in md and "| resolution |" in md and "oom" in md
    assert "faster than U-ViT at **899 px**" in md and "+11.1 %" in md
    behind = speed_summary_markdown(_frame([4, 8, 16, 32], [1, 2, 4, 8], [1, 1, 1, 1]))
    assert "batch 1: DiM becomes faster than U-ViT at **none in the measured range**" in behind
    ahead = speed_summary_markdown(_frame([1, 2, 4, 8], [4, 8, 16, 32], [1, 1, 1, 1], res=(1280, 1536, 1792, 2048)))
    assert "batch 1: DiM is faster than U-ViT **at every measured resolution** (1280 px and up)" in ahead


# -- the command line -----------------------------------------------------------------------------------------
def _app():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root():  # a group, so `speed` and `profile` are subcommands as under `dimstudy`
        pass

    return app


def test_cli_speed_runs_tiny_models_and_appends_rows(tmp_path):
    res = CliRunner().invoke(_app(), ["speed", "--models", "uvit_tiny_2", "--resolutions", "16", "--batch", "1",
                                      "--dtype", "fp32", "--device", "cpu", "--warmup", "1", "--repeats", "2",
                                      "--no-measure-rates", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = read_table("speed", tmp_path)
    assert len(rows) == 1 and rows["status"].iloc[0] == "ok" and rows["model"].iloc[0] == "uvit_tiny_2"
    assert (tmp_path / "speed_fig3.png").exists() and (tmp_path / "speed_summary.md").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--models", "nope"], "valid choices: dim (=dim_h_2)"),
        (["--models", "dim", "--resolutions", "1000"], "not divisible by 16"),
        (["--resolutions", "256,abc"], "comma-separated integers"),
        (["--dtype", "int8"], "valid choices: bf16, fp16, fp32"),
        (["--mode", "sample"], "valid choices: infer, train"),
        (["--cuda-graphs", "--mode", "train"], "--cuda-graphs"),
        (["--compile", "--compile-scope", "layers"], "valid choices: model, blocks"),
        (["--compile-scope", "blocks"], "add --compile"),
    ],
)
def test_cli_bad_inputs_give_one_line_errors(args, needle):
    res = CliRunner().invoke(_app(), ["speed", "--device", "cpu", *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_cli_help_has_a_copy_pastable_example():
    res = CliRunner().invoke(_app(), ["speed", "--help"])
    text = " ".join(res.output.split())  # the help is wrapped at the terminal width; the example is whole
    assert "dimstudy speed --models dim,uvit,mamba --resolutions 256,512,768,1024,1280,1536,2048 --batch 1,8" in text


def test_compile_scope_reaches_the_worker(monkeypatch):
    """The point's compile scope is what the worker compiles with (Dynamo's eager backend here: CPU, quick)."""
    import dimstudy.bench.speed as speed

    scopes, real = [], speed.compile_network

    def eager_backend(net, scope):
        scopes.append(scope)
        return real(net, scope, backend="eager")

    monkeypatch.setattr(speed, "compile_network", eager_backend)
    from dimstudy.bench.speed import measure_point

    row = measure_point("dim_tiny_2", 16, 1, dtype="fp32", compile=True, compile_scope="blocks", warmup=1,
                        repeats=2, budget_s=1.0, device="cpu")
    assert scopes == ["blocks"] and row["ms"] > 0


def test_compiled_sweeps_compile_block_by_block_unless_asked_otherwise(tmp_path):
    from dimstudy.bench.speed import scope_of, validate

    plain = _cfg(tmp_path, models=["dim_tiny_2"], resolutions=[16], batches=[1], compile=True)
    assert validate(plain) and scope_of(plain) == "blocks"
    assert scope_of(_cfg(tmp_path, compile=True, compile_scope="model")) == "model"
    assert validate(_cfg(tmp_path, models=["dim_tiny_2"], resolutions=[16], batches=[1]))  # no compile, no scope: fine
