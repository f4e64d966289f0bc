"""The profile table (`dimstudy profile`): where one forward's time goes, per category and model, as Markdown
and CSV, from the rows `dimstudy.bench.profile.run_profile` measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dimstudy.bench.profile import CATEGORIES
from dimstudy.report.tables import markdown_table
from dimstudy.results import DEFAULT_ROOT


def profile_table(rows: list[dict]) -> pd.DataFrame:
    """category x model: ms and % of each model's timed forward (a DataFrame, one column pair per model)."""
    table = pd.DataFrame({"category": list(CATEGORIES), "what": list(CATEGORIES.values())})
    for r in rows:
        name = r.get("alias") or r["model"]
        if r.get("status", "ok") != "ok":
            table[f"{name} ms"] = r.get("status")
            continue
        table[f"{name} ms"] = [round(r[f"ms_{c}"], 3) for c in CATEGORIES]
        table[f"{name} %"] = [round(r[f"pct_{c}"], 1) for c in CATEGORIES]
    return table


def profile_markdown(rows: list[dict]) -> str:
    r0 = rows[0]
    head = (f"## Where one forward's time goes: {r0['resolution']} px, batch {r0['batch']}, {r0['dtype']}, "
            f"on {r0.get('gpu') or r0.get('device') or '?'}")
    notes = [
        "ms per forward by category (dimstudy.bench.profile: module-scoped record_function ranges, device time",
        "of every kernel attributed to the innermost range above its launch). `idle` = timed median - kernel time.",
    ]
    for r in rows:
        if r.get("status", "ok") == "ok":
            notes.append(f"- {r.get('alias') or r['model']}: timed median {r['wall_ms']:.2f} ms (IQR {r['wall_ms_iqr']:.2f}), "
                         f"{r.get('time_source', 'kernels')} {r['busy_ms']:.2f} ms; scan backend {r.get('scan_backend')}, "
                         f"attention backend {r.get('attn_backend')}")
        else:
            notes.append(f"- {r.get('alias') or r['model']}: {r['status']} ({r.get('error')})")
    return "\n".join([head, "", *notes, "", markdown_table(profile_table(rows), "{:g}")]) + "\n"


def write_profile(rows: list[dict], results: str | None = None) -> dict[str, Path]:
    """`<results>/profile/profile_<res>px_b<batch>_<dtype>.{md,csv}` of one run's rows; returns the two paths."""
    r0 = rows[0]
    out = Path(results or DEFAULT_ROOT) / "profile"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"profile_{r0['resolution']}px_b{r0['batch']}_{r0['dtype']}"
    paths = {"md": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv")}
    paths["md"].write_text(profile_markdown(rows), encoding="utf-8")
    profile_table(rows).to_csv(paths["csv"], index=False)
    return paths
