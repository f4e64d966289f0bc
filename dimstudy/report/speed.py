"""Fig. 3 and the numbers behind Sec. 4.2, as pure pandas/matplotlib functions over the `speed` table.

Every function takes the DataFrame `dimstudy.results.read_table("speed")` returns (or any frame with
its columns) and selects models by a *selector*: a registry name ("dim_h_2"), the alias the sweep was
asked for ("dim"), or a family ("dim" | "uvit" | "mamba"), in that order of precedence.

The paper's claims are shown as labelled text, never as data points: its Fig. 3 is a plot on an H800
with no published numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dimstudy.paper import FIG3_CLAIM, FIG3_CROSSOVER_PX
from dimstudy.report.tables import markdown_table


# -- selecting rows ----------------------------------------------------------------------------------------
def latest_sweep(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the most recent sweep (by timestamp); the whole frame when it has no `sweep` column."""
    if df.empty or "sweep" not in df:
        return df
    last = df.sort_values("timestamp")["sweep"].iloc[-1] if "timestamp" in df else df["sweep"].iloc[-1]
    return df[df["sweep"] == last]


def model_rows(df: pd.DataFrame, selector: str) -> pd.DataFrame:
    """Rows of the one model `selector` names: registry name, else alias, else family."""
    for col in ("model", "alias", "family"):
        if col in df and (df[col] == selector).any():
            rows = df[df[col] == selector]
            names = sorted(rows["model"].unique())
            if len(names) > 1:
                raise ValueError(f"{selector!r} matches several models ({', '.join(names)}); name one of them")
            return rows
    valid = sorted(set(df.get("model", pd.Series(dtype=str))) | set(df.get("alias", pd.Series(dtype=str)).dropna()))
    raise ValueError(f"no rows for model {selector!r}; valid choices: {', '.join(valid)}")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


SETTING = ("dtype", "mode", "compile", "compile_scope", "cuda_graphs", "gpu")  # rows compared with each other must share these


def check_one_setting(df: pd.DataFrame) -> None:
    mixed = [c for c in SETTING if c in df and df[c].dropna().astype(str).nunique() > 1]
    if mixed:
        raise ValueError(f"rows mix several {', '.join(mixed)}; select one setting (e.g. latest_sweep(df)) first")


def _ms_by_resolution(df: pd.DataFrame, selector: str, batch: int) -> pd.Series:
    """Median ms per resolution for one model and batch (ok rows; the latest row wins on repeats)."""
    check_one_setting(df)
    rows = _ok(model_rows(df, selector))
    rows = rows[rows["batch"] == batch]
    if "timestamp" in rows:
        rows = rows.sort_values("timestamp")
    return rows.groupby("resolution")["ms"].last().sort_index()


def where_measured(df: pd.DataFrame) -> str:
    """The GPU name the rows ran on (or their device type, e.g. 'cpu')."""
    for col in ("gpu", "device"):
        if col in df:
            names = [v for v in df[col].dropna().unique() if str(v)]
            if names:
                return ", ".join(map(str, names))
    return "?"


def _label(rows: pd.DataFrame) -> str:
    model = rows["model"].iloc[0]
    alias = rows["alias"].iloc[0] if "alias" in rows and pd.notna(rows["alias"].iloc[0]) else model
    return model if alias == model else f"{alias} ({model})"


# -- the numbers -------------------------------------------------------------------------------------------
def crossover(df: pd.DataFrame, a: str = "dim", b: str = "uvit", batch: int = 1) -> float | None:
    """The resolution above which `a` is faster than `b` at this batch, from the measured points.

    Only resolutions where both ran are used. With d(r) = log10(ms_a / ms_b) (positive: `a` slower),
    the answer is where d crosses zero for the last time going up in resolution, interpolated linearly
    in resolution between the two measured points on either side (d is on the log scale, as Fig. 3 is).
    A measured tie (d = 0) is its own answer. None when `a` is not faster at the largest common
    resolution, or is faster at every common resolution (no crossover inside the measured range).
    """
    ms_a, ms_b = _ms_by_resolution(df, a, batch), _ms_by_resolution(df, b, batch)
    common = ms_a.index.intersection(ms_b.index).sort_values()
    if len(common) == 0:
        return None
    d = [math.log10(ms_a[r] / ms_b[r]) for r in common]
    if d[-1] > 0 or all(v < 0 for v in d):
        return None
    i = max(k for k, v in enumerate(d) if v >= 0)  # the last point where `a` was not yet faster
    if d[i] == 0 or i == len(d) - 1:
        return float(common[i])
    r0, r1 = float(common[i]), float(common[i + 1])
    return r0 + (r1 - r0) * d[i] / (d[i] - d[i + 1])


def overhead(df: pd.DataFrame, batch: int = 1, min_res: int = 1024, a: str = "dim", b: str = "mamba") -> pd.DataFrame:
    """`a`'s time over `b`'s, per common resolution >= min_res: (ms_a / ms_b - 1) x 100 %."""
    ms_a, ms_b = _ms_by_resolution(df, a, batch), _ms_by_resolution(df, b, batch)
    common = [r for r in ms_a.index.intersection(ms_b.index).sort_values() if r >= min_res]
    return pd.DataFrame(
        {
            "resolution": common,
            f"ms_{a}": [ms_a[r] for r in common],
            f"ms_{b}": [ms_b[r] for r in common],
            "overhead_pct": [(ms_a[r] / ms_b[r] - 1) * 100 for r in common],
        }
    )


def speed_table(df: pd.DataFrame, value: str = "ms") -> pd.DataFrame:
    """resolution x (model, batch) of `value`; failed points show their status ("oom", "error", ...)."""
    cells = df.assign(
        label=df.apply(lambda r: f"{r['alias'] if 'alias' in df and pd.notna(r['alias']) else r['model']} b{r['batch']}", axis=1),
        cell=df.apply(lambda r: r[value] if r["status"] == "ok" else r["status"], axis=1),
    )
    return cells.pivot_table(index="resolution", columns="label", values="cell", aggfunc="last").sort_index()


def floor_table(df: pd.DataFrame) -> pd.DataFrame:
    """Measured ms against the roofline floor (dimstudy.bench.roofline) for every ok point."""
    cols = ["model", "batch", "resolution", "ms", "floor_compute_ms", "floor_memory_ms", "floor_ms", "ms_over_floor",
            "achieved_tflops", "frac_of_matmul"]
    ok = _ok(df)
    return ok[[c for c in cols if c in ok]].sort_values(["model", "batch", "resolution"]).reset_index(drop=True)


# -- Fig. 3 ------------------------------------------------------------------------------------------------
def plot_fig3(df: pd.DataFrame, path: str | Path, show_paper_claim: bool = True) -> Path:
    """Milliseconds per iteration against resolution on a log axis, one line per model, one panel per batch size.

    (The paper's Fig. 3 plots log10(iterations / ms); that is the same curve upside down, but a reader wants ms.)
    Points that ran out of memory (or were skipped after one did) are marked with an x on the panel's
    upper edge, where they would be slower than anything measured; errors and timeouts with a grey dot there.
    The paper's claim is a text label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_one_setting(df)
    batches = sorted(df["batch"].unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 4.2), squeeze=False, sharey=True)
    ok = _ok(df)
    hi = ok["ms"].max() * 2.0 if not ok.empty else 1e3  # where points that did not run are marked
    models = list(dict.fromkeys(df["model"]))
    for ax, batch in zip(axes[0], batches, strict=True):
        for k, model in enumerate(models):
            rows = df[(df["model"] == model) & (df["batch"] == batch)].sort_values("resolution")
            if rows.empty:
                continue
            good = rows[rows["status"] == "ok"]
            color = f"C{k}"
            ax.plot(good["resolution"], good["ms"], "o-", color=color, label=_label(rows))
            oom = rows[rows["status"].isin(["oom", "skipped"])]
            ax.plot(oom["resolution"], [hi] * len(oom), "x", color=color, ms=9, mew=2,
                    label=f"{_label(rows)}: out of memory" if len(oom) else None)
            bad = rows[rows["status"].isin(["error", "timeout"])]
            ax.plot(bad["resolution"], [hi] * len(bad), "o", mfc="none", color="grey")
        ax.set_title(f"batch {batch}")
        ax.set_yscale("log")  # times span orders of magnitude across resolutions
        ax.set_xlabel("resolution (px)")
        ax.set_xticks(sorted(df["resolution"].unique()))
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(alpha=0.3)
        res = df["resolution"]
        if show_paper_claim and res.min() <= FIG3_CROSSOVER_PX <= res.max():  # a reference line, not a data point
            ax.axvline(FIG3_CROSSOVER_PX, color="dimgray", ls=":", lw=1)
            ax.text(FIG3_CROSSOVER_PX, 0.98, " paper's crossover (H800)", transform=ax.get_xaxis_transform(),
                    fontsize=7, color="dimgray", va="top", rotation=90)
    axes[0][0].set_ylabel("ms per iteration (log scale; lower is faster)")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    dtype = ", ".join(sorted(df["dtype"].unique())) if "dtype" in df else ""
    mode = ", ".join(sorted(df["mode"].unique())) if "mode" in df else ""
    fig.suptitle(f"Speed across resolutions (Fig. 3) — measured on {where_measured(df)}, {dtype}, {mode}", fontsize=10)
    if show_paper_claim:
        fig.text(0.5, 0.01, FIG3_CLAIM, ha="center", va="bottom", fontsize=8, color="dimgray", style="italic")
    fig.tight_layout(rect=(0, 0.04 if show_paper_claim else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# -- the summary -------------------------------------------------------------------------------------------
def _has(df: pd.DataFrame, selector: str) -> bool:
    try:
        model_rows(df, selector)
        return True
    except ValueError:
        return False


def _crossover_said(df: pd.DataFrame, batch: int) -> str:
    """Where DiM overtakes U-ViT at this batch, in words: a resolution, or which side of the range it lies on."""
    x = crossover(df, "dim", "uvit", batch)
    if x is not None:
        return f"DiM becomes faster than U-ViT at **{x:.0f} px**"
    ms_a, ms_b = _ms_by_resolution(df, "dim", batch), _ms_by_resolution(df, "uvit", batch)
    common = ms_a.index.intersection(ms_b.index).sort_values()
    if len(common) and all(ms_a[r] < ms_b[r] for r in common):
        return f"DiM is faster than U-ViT **at every measured resolution** ({int(common[0])} px and up)"
    return "DiM becomes faster than U-ViT at **none in the measured range**"


def speed_summary_markdown(df: pd.DataFrame) -> str:
    """The sweep as Markdown: ms per iteration, the crossover and overhead numbers, the floor ratios."""
    if df.empty:
        return "No speed rows."
    gpu = where_measured(df)
    meta = ", ".join(f"{c} {', '.join(map(str, sorted(df[c].dropna().unique())))}" for c in ("dtype", "mode") if c in df)
    out = [f"## Speed (Fig. 3): ms per iteration on {gpu} ({meta})", ""]
    out += [
        "Median of the timed repeats; each point in its own process. Failed points show their status.",
        f"_{FIG3_CLAIM}._",
        "",
        markdown_table(speed_table(df, "ms")),
        "",
    ]
    for batch in sorted(df["batch"].unique()):
        if _has(df, "dim") and _has(df, "uvit"):
            out.append(f"- batch {batch}: {_crossover_said(df, batch)} (paper: above {FIG3_CROSSOVER_PX} px).")
        if _has(df, "dim") and _has(df, "mamba"):
            ov = overhead(df, batch)
            if not ov.empty:
                pct = ", ".join(f"{int(r)}: {p:+.1f} %" for r, p in zip(ov["resolution"], ov["overhead_pct"], strict=True))
                out.append(f"- batch {batch}: DiM's time over the Mamba baseline (≥ 1024 px): {pct}.")
    fl = floor_table(df)
    if not fl.empty and fl["floor_ms"].notna().any():
        out += ["", "### Measured time over the floor (FLOPs / matmul rate + minimum bytes / copy bandwidth)", "",
                markdown_table(fl)]
    cols = [c for c in ("git_sha", "torch", "cuda", "sweep") if c in df]
    if cols:
        out += ["", "Provenance: " + "; ".join(f"{c} {', '.join(map(str, df[c].dropna().unique()))}" for c in cols)]
    return "\n".join(out) + "\n"
