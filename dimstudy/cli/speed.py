"""`dimstudy speed` (the paper's Fig. 3, measured) and `dimstudy profile` (where one forward's time goes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dimstudy.cli.common import friendly, split_list

FIG3_RESOLUTIONS = "256,512,768,1024,1280,1536,2048"


def _ints(value: str, what: str) -> list[int]:
    out = []
    for v in split_list(value):
        try:
            out.append(int(v))
        except ValueError:
            raise ValueError(f"{what} must be comma-separated integers, got {v!r}") from None
    return out


def _inject(value: str | None) -> dict[str, str]:
    """'32:oom,64:crash' -> {'32': 'oom', '64': 'crash'} (test hook: fail the worker at that resolution)."""
    from dimstudy.bench.speed import INJECT

    out = {}
    for item in split_list(value):
        res, _, kind = item.partition(":")
        if kind not in INJECT:
            raise ValueError(f"--inject-failure wants RES:KIND with KIND one of {', '.join(INJECT)}; got {item!r}")
        out[res] = kind
    return out


# -- options of both `speed` and `profile` -------------------------------------------------------------------
DType = Annotated[str, typer.Option(help="bf16 | fp16 | fp32.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cuda | cuda:N | cpu.")]
ScanBackendOpt = Annotated[str | None, typer.Option(help="Mamba scan backend: auto | triton | cuda | torch | ref.")]
AttnBackendOpt = Annotated[str | None, typer.Option(help="U-ViT attention backend: sdpa | flash | math.")]


def register(app: typer.Typer) -> None:
    @app.command("speed")
    @friendly
    def speed(
        models: Annotated[str, typer.Option(help="Comma-separated: dim, uvit, mamba (the Fig. 3 trio: dim_h_2, "
                                            "uvit_900m_2, mamba_900m_2) or any registered model name.")] = "dim,uvit,mamba",
        resolutions: Annotated[str, typer.Option(help="Image sides in px (latent models see res/8 per side).")] = FIG3_RESOLUTIONS,
        batch: Annotated[str, typer.Option(help="Comma-separated batch sizes; one panel each in the figure.")] = "1,8",
        dtype: DType = "bf16",
        mode: Annotated[str, typer.Option(help="infer: one forward under no_grad (one denoising step); "
                                          "train: forward + backward + AdamW step.")] = "infer",
        compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (compile time is in first_call_s).")] = False,
        compile_scope: Annotated[str | None, typer.Option(
            help="With --compile: blocks (the default: each repeated block compiled on its own and shared, the code "
                 "between blocks eager; DiM-H/2 compiles in ~13 s instead of ~100 s, at the same speed within 2.3%) or "
                 "model (one graph through the whole forward).", show_default=False)] = None,
        cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Capture the forward in a CUDA graph and time replays.")] = False,
        warmup: Annotated[int, typer.Option(help="Untimed calls before timing.")] = 10,
        repeats: Annotated[int, typer.Option(help="Most timed calls per point (median reported).")] = 30,
        budget: Annotated[float, typer.Option(help="Seconds of timed calls per point at most (>= 3 calls).")] = 10.0,
        timeout: Annotated[float, typer.Option(help="Seconds per point, process start included; then 'timeout'.")] = 600.0,
        seed: Annotated[int, typer.Option(help="Seed for weights and random inputs.")] = 0,
        device: DeviceOpt = "auto",
        scan_backend: ScanBackendOpt = None,
        attn_backend: AttnBackendOpt = None,
        results: Annotated[Path | None, typer.Option(help="Results root; rows go to <DIR>/speed.jsonl.")] = None,
        skip_after_oom: Annotated[bool, typer.Option(help="After an OOM, mark larger resolutions of that model "
                                                     "and batch 'skipped' instead of running them.")] = True,
        measure_rates: Annotated[bool, typer.Option(help="Measure matmul TFLOP/s and copy GB/s first (for MFU and "
                                                    "the floor).")] = True,
        report: Annotated[bool, typer.Option(help="Write <DIR>/speed_fig3.png and speed_summary.md for this sweep.")] = True,
        sweep: Annotated[str | None, typer.Option(help="Continue the sweep with this id (from its rows): points "
                                                  "already measured are skipped, new rows join it.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List the points with tokens and GFLOPs; time nothing.")] = False,
        inject_failure: Annotated[str | None, typer.Option(hidden=True, help="Test hook: RES:oom|error|crash.")] = None,
    ):
        """Time one denoising iteration across resolutions: the paper's Fig. 3 (Sec. 4.2), measured.

        Each (model, resolution, batch) runs in its own process: warm-up, then CUDA events around every repeat, median and IQR. Out-of-memory and failed points become rows too. Rows are appended to the results table `speed` as each point finishes, with GPU, versions, git SHA and backends; the matmul rate and copy bandwidth they are judged against are measured first, on the same GPU.

        Example (the full Fig. 3 sweep on one GPU):

          dimstudy speed --models dim,uvit,mamba --resolutions 256,512,768,1024,1280,1536,2048 --batch 1,8 --dtype bf16

        Example (quick, CPU): dimstudy speed --models dim_tiny_2,uvit_tiny_2 --resolutions 16,32 --batch 1 --dtype fp32 --device cpu
        """
        from dimstudy.bench.speed import SpeedConfig, run_sweep, static_counts, validate

        cfg = SpeedConfig(
            models=split_list(models), resolutions=_ints(resolutions, "--resolutions"), batches=_ints(batch, "--batch"),
            dtype=dtype, mode=mode, compile=compile, compile_scope=compile_scope, cuda_graphs=cuda_graphs, warmup=warmup, repeats=repeats,
            budget_s=budget, timeout_s=timeout, seed=seed, device=device, scan_backend=scan_backend,
            attn_backend=attn_backend, skip_after_oom=skip_after_oom, measure_rates=measure_rates,
            results=str(results) if results else None, sweep=sweep, inject=_inject(inject_failure),
        )
        if dry_run:
            from dimstudy.bench.speed import model_overrides

            for alias, model, res, b in validate(cfg):
                c = static_counts(model, res, b, dtype, model_overrides(model, scan_backend, attn_backend))
                typer.echo(f"{alias:>8} {model:<14} {res:>5} px  batch {b:<3} input {c['input_shape']:<12} "
                           f"tokens {c['tokens']:>6}  {c['gflops']:9.1f} GFLOPs/image  params {c['params'] / 1e6:.0f}M")
            return
        rows = run_sweep(cfg, progress=True, echo=typer.echo)
        _finish(rows, cfg.results, report)

    @app.command("profile")
    @friendly
    def profile(
        model: Annotated[str, typer.Option(help="Comma-separated models (dim, uvit, mamba or registered names).")] = "dim,uvit",
        resolution: Annotated[int, typer.Option(help="Image side in px.")] = 1024,
        batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
        dtype: DType = "bf16",
        warmup: Annotated[int, typer.Option(help="Untimed forwards first.")] = 5,
        repeats: Annotated[int, typer.Option(help="Timed forwards for the wall-time median.")] = 20,
        prof_iters: Annotated[int, typer.Option(help="Forwards under the profiler (times are per forward).")] = 3,
        timeout: Annotated[float, typer.Option(help="Seconds per model, process start included.")] = 600.0,
        device: DeviceOpt = "auto",
        scan_backend: ScanBackendOpt = None,
        attn_backend: AttnBackendOpt = None,
        results: Annotated[Path | None, typer.Option(help="Results root: table <DIR>/profile.jsonl, files <DIR>/profile/.")] = None,
    ):
        """Where one forward's time goes: GEMMs, selective scan, causal conv, DiM's permutations and pads, norms and adaLN, attention, the rest - ms and % per category, each model in its own process.

        Kernel device time is attributed to the innermost module range above its launch (forward hooks push torch.profiler.record_function ranges; no model code changes). Writes a Markdown and a CSV table.

        Example: dimstudy profile --model dim,uvit --resolution 1024 --batch 1 --dtype bf16
        """
        from dimstudy.bench.profile import run_profile
        from dimstudy.report.profile import write_profile

        rows = run_profile(
            split_list(model), resolution=resolution, batch=batch, dtype=dtype, device=device, warmup=warmup,
            repeats=repeats, prof_iters=prof_iters, timeout_s=timeout, results=str(results) if results else None,
            scan_backend=scan_backend, attn_backend=attn_backend,
        )
        paths = write_profile(rows, str(results) if results else None)
        typer.echo(paths["md"].read_text(encoding="utf-8"))
        typer.echo(f"wrote {paths['md']} and {paths['csv']}")


def _finish(rows: list[dict], results: str | None, report: bool) -> None:
    """Print this sweep's summary; with `report`, also write the figure and the Markdown beside the table."""
    import pandas as pd

    from dimstudy.report.speed import plot_fig3, speed_summary_markdown
    from dimstudy.results import DEFAULT_ROOT, read_table

    df = pd.DataFrame(rows)
    if not df.empty:  # the whole sweep, also the points an earlier, interrupted run of it measured
        table = read_table("speed", results)
        df = table[table["sweep"] == df["sweep"].iloc[0]] if "sweep" in table else df
    summary = speed_summary_markdown(df)
    typer.echo(summary)
    bad = sum(r["status"] != "ok" for r in rows)
    root = Path(results or DEFAULT_ROOT)
    if report:
        fig = plot_fig3(df, root / "speed_fig3.png")
        (root / "speed_summary.md").write_text(summary, encoding="utf-8")
        typer.echo(f"wrote {fig} and {root / 'speed_summary.md'}")
    typer.echo(f"{len(rows)} rows appended to {root / 'speed.jsonl'} ({bad} not ok)")
