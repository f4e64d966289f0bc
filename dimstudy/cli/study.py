"""`dimstudy ablate`, `scan-study`, `sweep`, `worker` and `report`: the paper's ablations and sweeps as studies.

A study preset (dimstudy/presets/studies/<name>.toml, or any path) fills a StudyConfig; flags override it.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Literal

import typer

from dimstudy.checks import PRECISIONS
from dimstudy.cli.common import friendly, split_list
from dimstudy.models.components import COMPONENTS

# -- options shared by ablate, scan-study and sweep (each maps to one StudyConfig field) ---------------------
Preset = Annotated[str | None, typer.Option(help="Study preset: smoke, gpu-small, gpu-photos, paper (dimstudy/presets/studies/), or a .toml path.")]
StudyName = Annotated[str | None, typer.Option("--study", help="Study name (default: the preset's name); results go to RESULTS/NAME/.")]
Seeds = Annotated[str | None, typer.Option(help="Seeds, comma-separated, e.g. 0,1: every variant runs once per seed.")]
Results = Annotated[str | None, typer.Option("--results", help="Results root (rows, report, default storage).")]
Runs = Annotated[str | None, typer.Option("--runs", help="Where run directories (checkpoints) go.")]
Storage = Annotated[str | None, typer.Option(help="Optuna storage URL (default sqlite:///RESULTS/NAME/optuna.db), "
                                            "e.g. postgresql://user@host/db to share the study between machines.")]
Workers = Annotated[int | None, typer.Option(help="Local worker processes pulling trials (several can share a GPU); "
                                            "0: only enqueue the grid, for `dimstudy worker`s or a later command.")]
Nproc = Annotated[int | None, typer.Option(help="GPUs per trial: >1 trains through torchrun --nproc_per_node N.")]
Threads = Annotated[int | None, typer.Option(help="torch CPU threads per worker (default: cores // workers).")]
Model = Annotated[str | None, typer.Option(help="Registered model, e.g. dim_s_2.")]
Dataset = Annotated[str | None, typer.Option(help="Training data: digits, photos (both offline), cifar10, folder, latents.")]
DataDir = Annotated[str | None, typer.Option(help="Where the dataset lives.")]
Resolution = Annotated[int | None, typer.Option(help="Image side in pixels.")]
Steps = Annotated[int | None, typer.Option(help="Training steps per trial.")]
BatchSize = Annotated[int | None, typer.Option(help="Training batch size.")]
Lr = Annotated[float | None, typer.Option(help="AdamW learning rate.")]
Warmup = Annotated[int | None, typer.Option(help="Linear LR warm-up steps.")]
Ema = Annotated[float | None, typer.Option(help="EMA decay.")]
EmaWarmup = Annotated[bool | None, typer.Option("--ema-warmup/--no-ema-warmup", help="EMA decay min(decay, (1+t)/(10+t)) "
                                               "at step t: short runs need it.")]
Precision = Annotated[Literal[PRECISIONS] | None, typer.Option(help="Mixed precision (auto: bf16 on CUDA, fp32 on the CPU).")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda.")]
ScanBackend = Annotated[str | None, typer.Option(help="Selective-scan kernel: auto, triton, cuda, torch or ref.")]
NumSamples = Annotated[int | None, typer.Option(help="Samples per FID.")]
Sampler = Annotated[str | None, typer.Option(help="Diffusion sampler for FID: dpm_solver, dpm_solver++, ddim, euler_maruyama.")]
SampleSteps = Annotated[int | None, typer.Option(help="Sampler steps.")]
CudaGraphs = Annotated[bool | None, typer.Option("--cuda-graphs/--no-cuda-graphs", help="On CUDA, sample for FID "
                                                 "with the network replayed from CUDA graphs (default on).")]
Reference = Annotated[str | None, typer.Option(help="FID reference: dataset name or image folder (default: the training data).")]
NumReference = Annotated[int | None, typer.Option(help="Reference images (default: all).")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Any StudyConfig field as KEY=VALUE (TOML value), dotted for "
                                                 "tables: --set train.weight_decay=0 --set eval.kid=false --set grace_s=120.")]
Report = Annotated[bool, typer.Option("--report/--no-report", help="Write the report when the study is done.")]


def study_config(preset, overrides: dict, sets: list[str] | None):
    """Preset, then the flags (None: keep the preset's), then --set: a StudyConfig."""
    from dimstudy.study.config import deep_merge, load_study_config
    from dimstudy.train.config import parse_set

    return load_study_config(preset, deep_merge(overrides, parse_set(sets or [])))


def _study_options(
    preset: Preset = None, study: StudyName = None, seeds: Seeds = None, results: Results = None, runs: Runs = None,
    storage: Storage = None, workers: Workers = None, nproc: Nproc = None, threads: Threads = None,
    model: Model = None, dataset: Dataset = None, data_dir: DataDir = None, resolution: Resolution = None,
    steps: Steps = None, batch_size: BatchSize = None, lr: Lr = None, warmup_steps: Warmup = None,
    ema_decay: Ema = None, ema_warmup: EmaWarmup = None, precision: Precision = None, device: Device = None,
    scan_backend: ScanBackend = None, num_samples: NumSamples = None, sampler: Sampler = None,
    sample_steps: SampleSteps = None, cuda_graphs: CudaGraphs = None, reference: Reference = None, num_reference: NumReference = None, set_: Sets = None, report: Report = True,
) -> None:
    """The options of every study command (ablate, scan-study, sweep); `with_study_options` adds them."""


def with_study_options(command):
    """Append `_study_options`' parameters to a study command's own for Typer, and call the command with them
    gathered into one `opts` dict (its last parameter)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    shared = list(inspect.signature(_study_options, eval_str=True).parameters.values())

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**{p.name: kwargs[p.name] for p in own}, opts={p.name: kwargs[p.name] for p in shared})

    wrapper.__signature__ = inspect.Signature(own + shared)
    return wrapper


def study_overrides(opts: dict) -> dict:
    """The StudyConfig fields the shared flags set (None: keep the preset's value)."""
    o = opts
    return {
        "name": o["study"], "seeds": [int(s) for s in split_list(o["seeds"])] or None, "results_dir": o["results"],
        "runs_dir": o["runs"], "storage": o["storage"], "workers": o["workers"], "nproc": o["nproc"],
        "threads": o["threads"],
        "train": {**{k: o[k] for k in ("model", "dataset", "data_dir", "resolution", "steps", "batch_size", "lr",
                                       "warmup_steps", "ema_decay", "ema_warmup", "precision", "device")},
                  "model_kwargs": {"scan_backend": o["scan_backend"]} if o["scan_backend"] else None},
        "eval": {"num_samples": o["num_samples"], "sampler": o["sampler"], "steps": o["sample_steps"],
                 "cuda_graphs": o["cuda_graphs"],
                 "reference": o["reference"], "num_reference": o["num_reference"]},
    }


def _finish(result: dict, cfg, write_report: bool) -> None:
    """After a study's workers: its report (unless --no-report, or nothing ran: workers 0), then the outcome."""
    from dimstudy.report.build import build_report

    typer.echo(f"study {cfg.name!r}: trials {result['counts']}")
    if write_report and cfg.workers:
        report = build_report(Path(cfg.results_dir), cfg.name, log=typer.echo)
        out = Path(report).parent
        for name in ("tab4_ablation.md", "tab6_scans.md", "sweep.md"):
            if (out / name).exists():
                typer.echo("\n" + (out / name).read_text(encoding="utf-8").strip())
        typer.echo("")
        for name, what in (("tab4_ablation.md", "Tab. 4 table"), ("fid_tab4.png", "Tab. 4 plot"),
                           ("tab6_scans.md", "Tab. 6 table"), ("fid_tab6.png", "Tab. 6 plot"),
                           ("sweep.md", "sweep table"), ("loss_curves.png", "loss curves")):
            if (out / name).exists():
                typer.echo(f"{what}: {out / name}")
        typer.echo(f"report: {report}")


def register(app: typer.Typer) -> None:
    @app.command("ablate")
    @friendly
    @with_study_options
    def ablate(
        drop: Annotated[list[str] | None, typer.Option(help="Component to switch off, one variant per flag (repeat; "
                                                       "a comma-list drops several in one variant); 'each' = Tab. 4's "
                                                       f"rows. Names: {', '.join(COMPONENTS)}.")] = None,
        *, opts: dict,
    ):
        """Train and score the full DiM and each ablation (paper Tab. 4) under one budget, seeds and data.

        Every variant x seed is one Optuna trial, run exactly once; a killed study continues where it stopped
        when re-run. Ends with the report (tables, plots) under RESULTS/STUDY/report/.

        Example: dimstudy ablate --preset smoke --drop each
        """
        from dimstudy.study.grid import ablation_variants, check_drop_names
        from dimstudy.study.run import run_grid

        over = study_overrides(opts)
        drops = list(drop) if drop else None
        if drops:
            check_drop_names(drops)
        cfg = study_config(opts["preset"], {**over, "drop": drops}, opts["set_"])
        check_drop_names(cfg.drop)
        _finish(run_grid(cfg, ablation_variants(cfg.drop)), cfg, opts["report"])

    @app.command("scan-study")
    @friendly
    @with_study_options
    def scan_study(
        patterns: Annotated[str | None, typer.Option(help="Scan-pattern strings, comma-separated: 1234,12,1 (Tab. 6); "
                                                     "keys 1-4 are the paper's, 5-8 zigzag orders.")] = None,
        *, opts: dict,
    ):
        """Train and score DiM with each set of scan patterns (paper Tab. 6), all other designs on.

        Shares its trials with `ablate` on the same study: pattern 1234 is the full model, and 1 is -MS.

        Example: dimstudy scan-study --preset smoke --patterns 1234,12,1
        """
        from dimstudy.study.grid import scan_variants
        from dimstudy.study.run import run_grid

        over = study_overrides(opts)
        cfg = study_config(opts["preset"], {**over, "patterns": split_list(patterns) or None}, opts["set_"])
        _finish(run_grid(cfg, scan_variants(cfg.patterns)), cfg, opts["report"])

    @app.command("sweep")
    @friendly
    @with_study_options
    def sweep(
        space: Annotated[list[str] | None, typer.Option(help="Search-space entry NAME=LOW:HIGH[:log] or NAME=A,B,... "
                                                        "(repeat); NAME is a TrainConfig field or model_kwargs.FLAG, e.g. "
                                                        "lr=1e-4:3e-3:log, ema_decay=0.99,0.999, model_kwargs.d_state=8,16. "
                                                        "Default: the preset's [sweep.space].")] = None,
        n_trials: Annotated[int | None, typer.Option(help="Trials in total (workers share the count).")] = None,
        optuna_sampler: Annotated[str | None, typer.Option(help="tpe, random, cmaes, qmc or gp.")] = None,
        pruner: Annotated[str | None, typer.Option(help="median, percentile, hyperband, successive_halving or none.")] = None,
        metric: Annotated[str | None, typer.Option(help="Objective (minimised): fid or loss.")] = None,
        report_on: Annotated[str | None, typer.Option(help="What the pruner sees during training: loss or fid.")] = None,
        report_every: Annotated[int | None, typer.Option(help="Steps between pruner reports (0: 10 per trial).")] = None,
        *, opts: dict,
    ):
        """Hyperparameter search with an Optuna sampler and pruner on FID or loss.

        The study defaults to PRESET-sweep. Intermediate losses (or quick FIDs) go to the pruner.

        Example: dimstudy sweep --preset smoke --n-trials 6 --space lr=3e-4:3e-3:log --space model_kwargs.d_state=8,16
        """
        from dimstudy.study.run import run_sweep
        from dimstudy.study.sweep import parse_space_option

        over = study_overrides(opts)
        over["sweep"] = {"n_trials": n_trials, "sampler": optuna_sampler, "pruner": pruner, "metric": metric,
                         "report": report_on, "report_every": report_every}
        cfg = study_config(opts["preset"], over, opts["set_"])
        if space:
            cfg.sweep.space = parse_space_option(space)
        if opts["study"] is None:
            cfg.name = f"{cfg.name}-sweep"
        _finish(run_sweep(cfg), cfg, opts["report"])

    @app.command("worker")
    @friendly
    def worker(
        study: Annotated[str, typer.Option("--study", help="Name of an existing study.")],
        storage: Storage = None,
        results: Annotated[str, typer.Option("--results", help="Results root (rows; the default SQLite storage).")] = "results",
        threads: Threads = None,
        device: Device = None,
        max_trials: Annotated[int | None, typer.Option(help="Stop after this many trials.")] = None,
        wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait while other workers' trials run (to pick "
                                           "up a re-queued one), or stop when nothing waits.")] = True,
    ):
        """Join a study and run its remaining trials (start one per machine or GPU; they share the storage).

        Example: dimstudy worker --study gpu-small --storage postgresql://user@db-host/dimstudy
        """
        from dimstudy.study.run import run_worker

        n = run_worker(study, storage, results, threads=threads, device=device, max_trials=max_trials, wait=wait)
        typer.echo(f"worker done: ran {n} trial(s) of study {study!r}")

    @app.command("status")
    @friendly
    def status_cmd(
        study: Annotated[str, typer.Option("--study", help="Study name: RESULTS/NAME/ holds its rows and study.toml.")],
        results: Annotated[str, typer.Option("--results", help="Results root.")] = "results",
        preset: Annotated[str | None, typer.Option(help="Take the grid and settings from this preset instead of "
                                                   "RESULTS/NAME/study.toml (before the study's first run).")] = None,
        seeds: Seeds = None,
    ):
        """Which (variant, seed) cells of a grid study have a committed row, which remain, and the estimated
        GPU-minutes to finish them (from the measured trial times in the rows).

        The grid is Tab. 4 from the study's `drop` plus Tab. 6 from its `patterns`.

        Example: dimstudy status --study gpu-photos --seeds 0,1,2
        """
        from dimstudy.report.tables import markdown_table
        from dimstudy.study.cells import status_table
        from dimstudy.study.config import load_study_config
        from dimstudy.study.grid import ablation_variants, scan_variants

        saved = Path(results) / study / "study.toml"
        if preset is None and not saved.is_file():
            raise FileNotFoundError(f"no study {study!r}: {saved} does not exist (give --preset for a study that has "
                                    "not run yet)")
        over = {"name": study, "results_dir": results, "seeds": [int(s) for s in split_list(seeds)] or None}
        cfg = load_study_config(preset or saved, over)
        variants: dict = {}
        for v in [*ablation_variants(cfg.drop), *scan_variants(cfg.patterns)]:
            variants.setdefault(v.key, v)  # Tab. 4's name for the networks both tables share: full, -MS
        variants = list(variants.values())
        table, summary = status_table(cfg, variants, cfg.seeds)
        typer.echo(markdown_table(table))
        per = summary["minutes_per_trial"]
        typer.echo(f"\n{summary['done']} of {summary['cells']} cells done ({cfg.study_dir / 'runs.jsonl'}); "
                   f"{len(summary['remaining'])} remaining" + (": " + ", ".join(summary["remaining"]) if summary["remaining"] else ""))
        if summary["remaining"]:
            typer.echo(f"estimated {summary['minutes_left']:.0f} GPU-minutes to finish "
                       f"({per:.1f} min of the machine per trial, as measured in the rows, trials side by side counted "
                       "as they shared it)" if per == per else "no finished trial yet to estimate the time from")

    @app.command("report")
    @friendly
    def report_cmd(
        study: Annotated[str | None, typer.Option("--study", help="Study name (default: every study under RESULTS).")] = None,
        results: Annotated[str, typer.Option("--results", help="Results root.")] = "results",
        out: Annotated[str | None, typer.Option(help="Output directory (default RESULTS/STUDY/report); its README.md links "
                                                 "every image by a path relative to that directory.")] = None,
        storage: Annotated[str | None, typer.Option(help="First gather the rows that workers on other machines "
                                                    "stored in this Optuna storage (needs --study).")] = None,
        speed_sweep: Annotated[str | None, typer.Option(help="Add this speed sweep's Fig. 3 section: a folder under "
                                                        "RESULTS with a speed.jsonl (e.g. speed-aligned) or a sweep "
                                                        "id (default: only the study's own speed rows).")] = None,
    ):
        """Tables (Markdown, LaTeX, CSV) in the layout of the paper's Tab. 4, 6 and 1, plots, and the report.

        Example: dimstudy report --study smoke

        With a speed sweep: dimstudy report --study gpu-small --speed-sweep speed-aligned
        """
        from dimstudy.report.build import build_report

        if (out or storage) and study is None:
            raise ValueError("--out and --storage need --study")
        if storage:
            from dimstudy.study.rows import sync_rows
            from dimstudy.study.runner import attach

            found, _ = attach(study, storage, results)
            typer.echo(f"gathered {sync_rows(found, Path(results) / study)} row(s) from {storage}")
        build_report(Path(results), study, out, log=typer.echo, speed_sweep=speed_sweep)
