"""The study's figures as PNGs: FID per variant (with the paper's beside it), and training-loss curves.

Pure matplotlib over the tables of `dimstudy.report.tables` and the binned loss curves the rows point to.
(Fig. 3, the speed plot, is `dimstudy.report.speed.plot_fig3`.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dimstudy.report import tables


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fid(table: pd.DataFrame, path: str | Path, title: str = "", note: str = "") -> Path:
    """Left: our FID per variant, bar = mean over seeds, error bar = std, dots = single seeds.
    Right: the paper's FID for the same rows (CIFAR-10 FID-50K), on its own axis, since the scales differ."""
    plt = _plt()
    paper_col = next(c for c in table.columns if c.startswith("paper FID"))
    labels = list(table["variant"])
    x = range(len(labels))
    fig, (ax, axp) = plt.subplots(1, 2, figsize=(4 + 1.1 * len(labels), 4), gridspec_kw={"width_ratios": [3, 2]})
    std = [0.0 if math.isnan(s) else s for s in table["fid_std"]]
    ax.bar(x, table["fid_mean"], yerr=std, capsize=4, color="C0", alpha=0.75)
    for i, values in zip(x, table["fid_values"], strict=True):
        ax.plot([i] * len(values), values, "o", color="k", ms=3, zorder=3)
    if "verdict" in table and table["fid_delta"].notna().any():  # the table's words, on the bars
        ref = table["reference"].iloc[0]
        top = max(max(v) for v in table["fid_values"])
        for i, (said, delta, values) in enumerate(zip(table["verdict"], table["fid_delta"], table["fid_values"], strict=True)):
            said = said if isinstance(said, str) else None
            word = said or (tables.ONE_SEED if not math.isnan(delta) else f"reference ({ref})")
            ax.text(i, max(values) + 0.03 * top, word, rotation=90, ha="center", va="bottom", fontsize=7,
                    color="C3" if said in ("worse", "better") else "dimgray")
        ax.set_ylim(top=top * 1.9)
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set_ylabel("FID (ours)")
    tests = tables.tests_named(table)  # the words come from whichever test each row's interval came from
    spread = "measured: mean ± std over seeds" if (table["seeds"] > 1).any() else "measured (one seed)"
    ax.set_title(f"{spread}; words: {tables.LEVEL:.0%} {tests} CI of Δ vs the reference" if tests else spread, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    paper = table[paper_col]
    axp.bar(x, paper.fillna(0), color="C7", alpha=0.6)
    for i, v in zip(x, paper, strict=True):
        axp.text(i, (0 if math.isnan(v) else v), "—" if math.isnan(v) else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    axp.set_xticks(list(x), labels, rotation=30, ha="right")
    axp.set_title(f"{paper_col}\nCIFAR-10, FID-50K", fontsize=9)  # two lines: one is cut off on narrow figures
    axp.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return _save(fig, path)


def plot_loss_curves(curves: dict[str, list[pd.DataFrame]], path: str | Path, title: str = "",
                     smooth: int = 0) -> Path:
    """Training loss against step, one colour per variant: the mean over its seeds, and their min-max band.

    curves: label -> one DataFrame (step, loss) per seed. smooth: rolling-mean window over the curve's points
    (0: about a twentieth of them), because per-step diffusion losses are noisy.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, (label, runs) in enumerate(curves.items()):
        runs = [r for r in runs if not r.empty]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        w = smooth or max(1, n // 20)
        losses = pd.DataFrame({i: r["loss"].iloc[:n].rolling(w, min_periods=1).mean().values for i, r in enumerate(runs)})
        step = runs[0]["step"].iloc[:n].values
        ax.plot(step, losses.mean(axis=1), color=f"C{k}", label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(step, losses.min(axis=1), losses.max(axis=1), color=f"C{k}", alpha=0.15)
    ax.set_xlabel("step")
    ax.set_yscale("log")  # the ε-MSE falls by an order of magnitude early on
    ax.set_ylabel("training loss (ε-MSE, smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path
