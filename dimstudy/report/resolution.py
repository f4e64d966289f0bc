"""The resolution study (paper Sec. 3.3) as a report section: one table over the `resolution` table's rows,
plus each study's side-by-side sample grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from dimstudy.report.tables import markdown_table

METHOD_LABELS = {
    "direct": "direct (no guidance)",
    "upsample_guidance": "upsample guidance, Eq. (4)",
    "finetune": "weak-to-strong fine-tune",
}
COLUMNS = {  # table column -> row field, in display order
    "study": "study", "model": "model", "source step": "source_step", "px": "px", "method": "method", "sampler": "sampler_steps",
    "θ": "theta", "η": "eta", "fine-tune steps": "finetune_steps", "n": "n_samples", "n ref": "num_reference",
    "FID": "fid", "KID ×10³": "kid_1e3", "device": "where",
}


def resolution_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per row of the `resolution` table, studies in time order, methods in METHODS order."""
    from dimstudy.resolution import METHODS

    df = df.copy()
    blank = pd.Series("", index=df.index)
    df["order"] = df["method"].map({m: i for i, m in enumerate(METHODS)}).fillna(len(METHODS))
    df["first"] = df.groupby("study")["timestamp"].transform("min") if "timestamp" in df else ""
    df = df.sort_values(["first", "study", "order"], kind="stable")
    df["px"] = df["train_resolution"].astype(int).astype(str) + " → " + df["resolution"].astype(int).astype(str)
    df["method"] = df["method"].map(lambda m: METHOD_LABELS.get(m, m))
    df["sampler_steps"] = df["sampler"] + " × " + df["steps"].astype(int).astype(str)
    df["kid_1e3"] = df.get("kid_mean", blank.replace("", float("nan"))).astype(float) * 1e3
    gpu, device = (df.get(c, blank).fillna("").astype(str) for c in ("gpu", "device"))
    df["where"] = gpu.where(gpu != "", device)
    for col in ("theta", "eta"):  # only the guided rows have them
        df[col] = df.get(col, blank).map(lambda v: "" if pd.isna(v) or v == "" else f"{v:g}")
    df["finetune_steps"] = df["finetune_steps"].fillna(0).astype(int)
    df["source_step"] = df.get("source_step", blank).map(lambda v: "" if pd.isna(v) or v == "" else str(int(v)))
    return df[list(COLUMNS.values())].set_axis(list(COLUMNS), axis=1).reset_index(drop=True)


def run_key(path: str | Path) -> tuple[str, ...]:
    """A run's <study>/<run name>, from its directory or a checkpoint in it: the same run whether it is named
    absolutely, relatively, or under a runs root that moved (a GPU machine's /tmp/runs)."""
    path = Path(path)
    return (path.parent if path.suffix == ".pt" else path).parts[-2:]


def write_section(root: Path, out_dir: Path, sources: set[str] | None = None) -> str | None:
    """Markdown section over `<root>/resolution.jsonl`; writes resolution.md, resolution.csv and each study's
    side-by-side grid (copied from `<root>/<grid>`) into `out_dir`. With `sources` (run directories), only the
    rows whose low-resolution checkpoint came from one of them (compared by `run_key`). None when no rows are left."""
    from dimstudy.resolution import TABLE
    from dimstudy.results import read_table

    df = read_table(TABLE, root)
    if sources is not None and not df.empty:
        keys = {run_key(d) for d in sources}
        df = df[df["checkpoint"].map(lambda c: run_key(c) in keys)]
    if df.empty:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = resolution_table(df)
    table.to_csv(out_dir / f"{TABLE}.csv", index=False)

    lines = [
        "## Resolution: direct sampling vs upsample guidance vs weak-to-strong fine-tune (Sec. 3.3)",
        "",
        "One low-resolution checkpoint per study, sampled at m × its resolution three ways; FID/KID against the "
        "training data at the high resolution. FID depends strongly on n (and is biased high for small n); "
        "compare rows of one study only. Every panel of a study's grid starts from the same noise.",
        "",
        markdown_table(table, floatfmt="{:.2f}"),
        "",
    ]
    for study, rows in df.groupby("study", sort=False):
        grid = rows["grid"].dropna().iloc[0] if "grid" in rows and rows["grid"].notna().any() else None
        src = Path(root) / grid if grid else None
        if src is None or not src.is_file():
            lines.append(f"_{study}: no side-by-side grid found ({grid or 'none recorded'})._")
            continue
        name = f"{TABLE}_{study}.png"
        shutil.copyfile(src, out_dir / name)
        lines += [f"**{study}** ({rows['model'].iloc[0]}, {rows['checkpoint'].iloc[0]}):", "", f"![{study}]({name})", ""]
    cols = [c for c in ("git_sha", "torch", "feature_extractor") if c in df]
    if cols:
        lines.append("Provenance: " + "; ".join(f"{c} {', '.join(map(str, df[c].dropna().unique()))}" for c in cols))
    md = "\n".join(lines).rstrip() + "\n"
    (out_dir / f"{TABLE}.md").write_text(md, encoding="utf-8")
    return md
