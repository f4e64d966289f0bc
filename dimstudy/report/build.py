"""`dimstudy report`: assemble a study's report from the results store, into <results>/<study>/report/.

Writes README.md (the report: what the numbers are, then every section), each table as .md, .tex and .csv,
and the figures as PNG. Sections, each a function (root, out_dir) -> Markdown or None when it has no data:

    Tab. 4 (components), Tab. 6 (scan patterns), sweep, training-loss curves, Tab. 1 (model sizes)
    speed (Fig. 3)          an adapter around dimstudy.report.speed, over the study's own `speed` rows or a
                            sweep the user names (never another folder's rows by default)
    resolution (Sec. 3.3)   dimstudy.report.resolution.write_section over the resolution studies whose
                            low-resolution checkpoint is one of this study's runs
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dimstudy.models.components import COMPONENTS
from dimstudy.paper import TAB4_DROPS, TAB6_PATTERNS, variant_label
from dimstudy.report import plots, tables
from dimstudy.results import read_table
from dimstudy.study.grid import make_variant
from dimstudy.study.rows import read_runs

Log = Callable[[str], None]


def build_report(results_dir: str | Path = "results", study: str | None = None, out_dir: str | Path | None = None,
                 log: Log = print, speed_sweep: str | None = None) -> Path | list[Path]:
    """The report of one study (its README.md path), or of every study under results_dir (a list).

    Its speed section shows the study's own speed rows (`<study>/speed.jsonl`), or the sweep `speed_sweep` names
    (see `speed_rows`); a study with neither has no speed section.
    """
    results_dir = Path(results_dir)
    if study is None:
        studies = sorted(p.parent.name for p in results_dir.glob("*/runs.jsonl"))
        if not studies:
            raise FileNotFoundError(f"no study results under {results_dir} (no */runs.jsonl)")
        return [build_report(results_dir, s, None, log, speed_sweep) for s in studies]
    if speed_sweep is not None:
        speed_rows(results_dir, study, speed_sweep)  # an unknown sweep stops here, before anything is written
    df = read_runs(results_dir, study)
    if df.empty:
        raise FileNotFoundError(f"no rows for study {study!r}: {results_dir / study / 'runs.jsonl'} is missing or empty")
    out = Path(out_dir) if out_dir else results_dir / study / "report"
    out.mkdir(parents=True, exist_ok=True)
    # image links relative to the README's folder, so a report (wherever --out put it) moves and commits as it is
    rel_study = Path(os.path.relpath((results_dir / study).resolve(), out.resolve()))

    sections = [header(df, study), tab4_section(df, out), tab6_section(df, out), sweep_section(df, out)]
    sections.append(loss_section(df, out, results_dir / study))
    sections.append(samples_section(df, rel_study))
    sections.append(sizes_section(df, out))
    run_dirs = set(df["run_dir"].dropna().astype(str)) if "run_dir" in df else set()
    for md in (speed_section(results_dir, out, study, speed_sweep), resolution_section(results_dir, out, run_dirs)):
        if md:
            sections.append(md)
    sections.append(failures_section(df))
    path = out / "README.md"
    path.write_text("\n\n".join(s.strip() for s in sections if s) + "\n", encoding="utf-8")
    written = sorted(p for p in out.iterdir() if p.suffix in (".md", ".csv", ".png", ".tex"))
    log(f"report: {path}")
    for p in written:
        if p.name.startswith(("tab4", "tab6", "fid_", "loss_", "fig3")) and p.suffix in (".md", ".png"):
            log(f"  {p}")
    return path


# -- what the numbers are -------------------------------------------------------------------------------------
def _values(df: pd.DataFrame, col: str) -> str:
    """The distinct values of a column, sorted, as text ('?' when the rows lack the column)."""
    if col not in df:
        return "?"
    vals = [v for v in df[col].dropna().unique() if str(v) != ""]
    try:
        vals = sorted(vals)
    except TypeError:
        pass
    return ", ".join(_fmt(v) for v in vals) if vals else "—"


def _overrides(df: pd.DataFrame) -> str:
    """' (d_state 4)': the study's constructor overrides other than the ablated flags and the kernel choice."""
    skip = {*COMPONENTS, "scan_patterns", "scan_backend"}
    cols = [c for c in df.columns if c.startswith("config.train.model_kwargs.") and c.rsplit(".", 1)[1] not in skip]
    parts = [f"{c.rsplit('.', 1)[1]} {_values(df, c)}" for c in sorted(cols)]
    return f" ({', '.join(parts)})" if parts else ""


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _ema_warmup(df: pd.DataFrame) -> str:
    return " with warm-up" if "ema_warmup" in df and df["ema_warmup"].fillna(False).astype(bool).all() else ""


def _ema_shares(df: pd.DataFrame) -> pd.Series:
    """Each row's ema_init_share; rows written before that column existed get it from ema_decay and steps."""
    from dimstudy.train.ema import init_share

    warm = df["ema_warmup"].fillna(False).astype(bool) if "ema_warmup" in df else [False] * len(df)
    computed = pd.Series([init_share(d, int(s), w) if pd.notna(d) and pd.notna(s) else 0.0
                          for d, s, w in zip(df["ema_decay"], df["steps"], warm, strict=True)], index=df.index)
    return df["ema_init_share"].fillna(computed) if "ema_init_share" in df else computed


def ema_alarm(df: pd.DataFrame) -> str | None:
    """A warning when the sampled EMA weights were still largely the initial weights (too short a run for
    its decay): the FIDs then measure that blend, not the designs."""
    from dimstudy.train.ema import EMA_INIT_WARN

    if df.empty or "ema_decay" not in df or "steps" not in df:
        return None
    share = _ema_shares(df).max()
    if not share > EMA_INIT_WARN:
        return None
    return (f"> **Warning: these FIDs do not measure the networks.** The EMA weights that were sampled still "
            f"held up to {share:.0%} of the initial weights (EMA decay {_values(df, 'ema_decay')} over "
            f"{_values(df, 'steps')} steps{_ema_warmup(df) or ', no warm-up'}); such a blend of init and trained "
            "weights samples noise. Re-run with `ema_warmup = true` or a lower `ema_decay`.")


def header(df: pd.DataFrame, study: str) -> str:
    ok = tables.ok_rows(df)
    where = ok if not ok.empty else df
    gpu = _values(where, "gpu")
    device = gpu if gpu not in ("?", "—") else _values(where, "device") + f" ({_values(where, 'cpu')})"
    lines = [
        f"# Study `{study}`",
        "",
        "What the numbers are:",
        "",
        f"- preset: {_values(where, 'preset')}; model: {_values(where, 'model')}{_overrides(where)}; data: "
        f"{_values(where, 'dataset')} at {_values(where, 'resolution')} px",
        f"- training: {_values(where, 'steps')} steps of batch {_values(where, 'batch_size')}, lr {_values(where, 'lr')}, "
        f"EMA {_values(where, 'ema_decay')}{_ema_warmup(where)}, precision {_values(where, 'precision')}; seeds {_values(where, 'seed')}",
        f"- FID: **{_values(where, 'num_samples')} samples** of the EMA model ({_values(where, 'sampler')}, "
        f"{_values(where, 'sample_steps')} steps) against {_values(where, 'num_reference')} reference images "
        f"({_values(where, 'reference')}); Inception: {_values(where, 'feature_extractor')}",
        f"- ran on: {device}; scan backend {_values(where, 'scan_backend')}; torch {_values(where, 'torch')}, "
        f"CUDA {_values(where, 'cuda')}; git {_values(where, 'git_sha')}",
        f"- rows: {len(df)} ({len(ok)} finished trials); "
        + (f"{ok['timestamp'].min()} to {ok['timestamp'].max()}; " if "timestamp" in ok and not ok.empty else "")
        + (f"trials' wall times summed: {ok['wall_s'].sum() / 60:.1f} min (workers run trials side by side)"
           if "wall_s" in ok and not ok.empty else ""),
        "",
        "FID from a few hundred samples is biased high and noisy (it falls as the sample count grows), so compare "
        "rows of one table only. The paper's columns are the paper's own numbers: DiM-S/2 on CIFAR-10 after 500K "
        "steps, FID-50K against the training set; they show what the ordering looked like there, not a target "
        "for these numbers. ± is the standard deviation over seeds. Δ FID is a row's difference to the full model, "
        f"with the {tables.TEST}: 'worse' or 'better' when the interval excludes 0, 'not distinguishable' when it "
        "includes 0, and no signed difference at all where a side has one seed. The seed fixes the data order and "
        "every noise draw, which all variants share, so pairing by seed removes its common shift; still, with two "
        "or three seeds the t quantile at 1-4 degrees of freedom is 2.8-12.7: only consistent gaps are "
        "distinguishable, and the ordering claims below use only those rows.",
    ]
    alarm = ema_alarm(where)
    if alarm:
        lines += ["", alarm]
    return "\n".join(lines)


# -- tables and their figures ----------------------------------------------------------------------------------
def _write_table(table: pd.DataFrame, out: Path, stem: str, caption: str, fid_header: str) -> str:
    """The table as .md (with its note and ordering claim under it), .tex (both in the caption) and .csv."""
    shown = tables.display(table, fid_header)
    words = " ".join(w for w in (tables.table_note(table), tables.ordering_claim(table)) if w)
    md = tables.markdown_table(shown) + (f"\n\n{words}" if words else "")
    (out / f"{stem}.md").write_text(md + "\n", encoding="utf-8")
    (out / f"{stem}.tex").write_text(tables.latex(shown, f"{caption} {words}".strip(), f"tab:{stem}"), encoding="utf-8")
    tables.csv_frame(table).to_csv(out / f"{stem}.csv", index=False, float_format="%.6g")
    return md


def _fid_header(df: pd.DataFrame) -> str:
    n = _values(tables.ok_rows(df), "num_samples")
    return f"FID (ours, {n} samples)"


def tab4_section(df: pd.DataFrame, out: Path) -> str | None:
    """Tab. 4, when it has two rows or more (or Tab. 6 has fewer: then it is all there is)."""
    t = tables.ablation_table(df)
    if t.empty or len(t) < 2 and len(tables.scan_table(df)) >= 2:
        return None
    caption = "Ablation of DiM's designs (paper Tab. 4): MS multiple scan patterns, LSC long skips, PT padding tokens, LFE local convs."
    md = _write_table(t, out, "tab4_ablation", caption, _fid_header(df))
    plots.plot_fid(t, out / "fid_tab4.png", "Tab. 4: ablations", _note(df))
    missing = [variant_label(v.components, minus="−") for v in map(make_variant, TAB4_DROPS)
               if v.key not in set(t["variant_key"])]
    if missing:
        md += f"\n\nNot run yet: {', '.join(missing)} (`dimstudy ablate --drop each` on this study adds them)."
    return "\n".join([f"## Tab. 4: ablations\n\n{caption}\n", md, "",
                      "Files: `tab4_ablation.md`, `.tex`, `.csv`.\n", "![FID per variant](fid_tab4.png)"])


def tab6_section(df: pd.DataFrame, out: Path) -> str | None:
    """Tab. 6, when it compares two pattern sets or more (an ablation alone gives it only the full model)."""
    t = tables.scan_table(df)
    if len(t) < 2:
        return None
    caption = "Scan patterns (paper Tab. 6): ① row-major, ② reversed, ③ column-major, ④ reversed; ⑤–⑧ zigzag orders (not in the paper)."
    md = _write_table(t, out, "tab6_scans", caption, _fid_header(df))
    plots.plot_fid(t, out / "fid_tab6.png", "Tab. 6: scan patterns", _note(df))
    missing = [p for p in TAB6_PATTERNS if p not in set(t["scan_patterns"])]
    note = ("The rows 1234 and 1 are the networks of Tab. 4's full and −MS rows (the same trials)."
            + (f" Not run yet: {', '.join(missing)} (`dimstudy scan-study` on this study adds it)." if missing else ""))
    md += f"\n\n{note}"
    return "\n".join([f"## Tab. 6: scan patterns\n\n{caption}\n", md, "",
                      "Files: `tab6_scans.md`, `.tex`, `.csv`.\n", "![FID per scan pattern](fid_tab6.png)"])


def _note(df: pd.DataFrame) -> str:
    ok = tables.ok_rows(df)
    return (f"ours: {_values(ok, 'num_samples')} samples, {_values(ok, 'steps')} training steps, "
            f"{_values(ok, 'dataset')} {_values(ok, 'resolution')} px, {_values(ok, 'gpu') if _values(ok, 'gpu') not in ('?', '—') else _values(ok, 'device')}")


def sweep_section(df: pd.DataFrame, out: Path) -> str | None:
    t = tables.sweep_table(df)
    if t.empty:
        return None
    t.to_csv(out / "sweep.csv", index=False, float_format="%.6g")
    md = tables.markdown_table(t)
    (out / "sweep.md").write_text(md + "\n", encoding="utf-8")
    return f"## Sweep\n\nTrials best first (pruned and failed trials last).\n\n{md}\n\nFiles: `sweep.md`, `sweep.csv`."


def loss_section(df: pd.DataFrame, out: Path, study_dir: Path) -> str | None:
    ok = tables.ok_rows(df)
    if ok.empty or "loss_curve" not in ok:
        return None
    ok = in_table_order(ok, df)
    curves: dict[str, list[pd.DataFrame]] = {}
    for _, r in ok.iterrows():
        path = study_dir / str(r["loss_curve"])
        if isinstance(r["loss_curve"], str) and path.is_file():
            label = r["variant"] if r.get("kind") == "grid" else f"trial {r['trial']}"
            curves.setdefault(str(label), []).append(pd.read_csv(path))
    if not curves:
        return None
    plots.plot_loss_curves(curves, out / "loss_curves.png", "Training loss per variant")
    return "## Training loss\n\nMean over seeds (band: min to max), smoothed.\n\n![training loss](loss_curves.png)"


def in_table_order(rows: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the tables' order (Tab. 4's full, -LFE, ..., then Tab. 6's, then the rest), seeds ascending."""
    order = [*tables.ablation_table(df).get("variant_key", []), *tables.scan_table(df).get("variant_key", [])]
    rank = {k: i for i, k in enumerate(dict.fromkeys(order))}
    rows = rows.assign(_rank=rows["variant_key"].map(rank).fillna(len(rank)) if "variant_key" in rows else 0)
    return rows.sort_values(["_rank", "seed"] if "seed" in rows else ["_rank"], kind="stable").drop(columns="_rank")


def samples_section(df: pd.DataFrame, rel_study: Path) -> str | None:
    ok = in_table_order(tables.ok_rows(df), df)
    if ok.empty or "grid" not in ok:
        return None
    cells = [f"**{r['variant']}** seed {r['seed']}<br>![{r['variant']}]({(rel_study / r['grid']).as_posix()})"
             for _, r in ok.iterrows() if isinstance(r.get("grid"), str)]
    if not cells:
        return None
    head = "| " + " | ".join("" for _ in cells[:4]) + " |\n|" + "---|" * min(4, len(cells))
    body = "\n".join("| " + " | ".join(cells[i:i + 4]) + " |" for i in range(0, len(cells), 4))
    return f"## Samples (EMA, the first of each run's FID samples)\n\n{head}\n{body}"


def sizes_section(df: pd.DataFrame, out: Path) -> str:
    """Tab. 1 (DiM-S/L/H as counted here beside the paper's numbers), then the networks this study trained."""
    t = tables.sizes_table()
    (out / "tab1_sizes.md").write_text(tables.markdown_table(t) + "\n", encoding="utf-8")
    (out / "tab1_sizes.tex").write_text(tables.latex(t, "Model sizes (paper Tab. 1)", "tab:tab1_sizes"), encoding="utf-8")
    t.to_csv(out / "tab1_sizes.csv", index=False)
    md = ("## Tab. 1: model sizes\n\nCounted by `dimstudy.flops.summarize` at 32x32 input: parameters and GMACs of "
          "one forward at batch 1 (the paper's 'GFLOPs'), with and without DiM's pad tokens.\n\n" + tables.markdown_table(t))
    ok = tables.ok_rows(df)
    cols = [c for c in ("variant", "model", "blocks", "width", "resolution", "params_m", "gflops") if c in ok]
    if not ok.empty and "params_m" in ok:
        v = in_table_order(ok, df).drop_duplicates("variant_key")[cols].reset_index(drop=True)
        v = v.rename(columns={"params_m": "params (M)", "gflops": "GFLOPs", "resolution": "px"})
        md += "\n\nThe networks this study trained (GFLOPs at their training resolution):\n\n" + tables.markdown_table(v)
    return md


def failures_section(df: pd.DataFrame) -> str | None:
    if "status" not in df:
        return None
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return None
    cols = [c for c in ("trial", "variant", "seed", "status", "error", "timestamp") if c in bad]
    return "## Trials that did not finish\n\n" + tables.markdown_table(bad[cols].reset_index(drop=True))


# -- sections from other tables -------------------------------------------------------------------------------
def _table_roots(results_dir: Path, table: str) -> list[Path]:
    """Where `<table>.jsonl` lives: the results root itself, else each of its sub-directories that has one."""
    if (results_dir / f"{table}.jsonl").is_file():
        return [results_dir]
    return sorted(p.parent for p in results_dir.glob(f"*/{table}.jsonl"))


def speed_rows(results_dir: Path, study: str | None = None, sweep: str | None = None) -> tuple[pd.DataFrame, str]:
    """(rows, where they are from) of one speed sweep: the one `sweep` names, else the study's own.

    `sweep` is a sweep id (the rows' `sweep` column) or the folder under results_dir that holds a speed.jsonl (its
    latest sweep); an unknown name raises ValueError listing the valid ones. Without `sweep`, a study's report shows
    the latest sweep of `<results_dir>/<study>/speed.jsonl` only; never rows found elsewhere, which measured something
    else. Empty rows (and '') when there are none.
    """
    from dimstudy.report.speed import latest_sweep

    results_dir = Path(results_dir)
    if sweep is None:
        own = results_dir / study if study else None
        if own is None or not (own / "speed.jsonl").is_file():
            return pd.DataFrame(), ""
        return latest_sweep(read_table("speed", own)), str(own / "speed.jsonl")
    roots = [r for r in (results_dir, *sorted(p.parent for p in results_dir.glob("*/speed.jsonl")))
             if (r / "speed.jsonl").is_file()]
    if (results_dir / sweep / "speed.jsonl").is_file():
        return latest_sweep(read_table("speed", results_dir / sweep)), str(results_dir / sweep / "speed.jsonl")
    names: list[str] = []
    for root in roots:
        df = read_table("speed", root)
        if "sweep" in df and (df["sweep"] == sweep).any():
            return df[df["sweep"] == sweep], f"{root / 'speed.jsonl'} (sweep {sweep})"
        names += [root.name, *df.get("sweep", pd.Series(dtype=str)).dropna().unique()]
    raise ValueError(f"no speed sweep {sweep!r} under {results_dir}; valid: {', '.join(map(str, names)) or 'none (no speed rows)'}")


def speed_section(results_dir: Path, out_dir: Path, study: str | None = None, sweep: str | None = None) -> str | None:
    """Fig. 3 and the speed summary (dimstudy.report.speed) over the rows `speed_rows` picks; None without rows
    (and the section's files an earlier report wrote into out_dir are removed, so none is left stale)."""
    from dimstudy.report.speed import plot_fig3, speed_summary_markdown

    df, source = speed_rows(Path(results_dir), study, sweep)
    if df.empty:
        for name in ("fig3_speed.png", "speed.md"):
            (Path(out_dir) / name).unlink(missing_ok=True)
        return None
    plot_fig3(df, Path(out_dir) / "fig3_speed.png")
    md = speed_summary_markdown(df).rstrip() + f"\n\nRows: `{source}`.\n\n![Fig. 3](fig3_speed.png)\n"
    (Path(out_dir) / "speed.md").write_text(md, encoding="utf-8")
    return md


def resolution_section(results_dir: Path, out_dir: Path, run_dirs: set[str] | None = None) -> str | None:
    """dimstudy.report.resolution's section over the resolution rows (of checkpoints from `run_dirs`, when
    given: a study's report shows the resolution studies of its own runs), or None."""
    if importlib.util.find_spec("dimstudy.report.resolution") is None:
        return None
    section = importlib.import_module("dimstudy.report.resolution").write_section
    for root in _table_roots(Path(results_dir), "resolution"):
        md = section(root, Path(out_dir), run_dirs)
        if md:
            return md
    return None
