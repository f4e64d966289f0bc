"""The paper's tables from the `runs` rows: Tab. 4 (components), Tab. 6 (scan patterns), Tab. 1 (model sizes).

Each table is a function from the rows (`dimstudy.study.read_runs`) to a numeric DataFrame (what the CSV
holds: fid_mean, fid_std, seeds, ...); `display` turns one into text cells (check marks, "mean ± std"),
which `markdown` and `latex` render. The paper's numbers sit in their own, labelled column, never mixed with
ours: they are CIFAR-10 FID-50K, and ours are whatever the rows say (the report states it).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import pandas as pd

from dimstudy.models.components import COMPONENTS
from dimstudy.paper import PAPER_COL, TAB4, TAB4_PATTERNS, TAB6, TAB6_PATTERNS, tab6_network, variant_label
from dimstudy.study.grid import make_variant

PAPER_TAB4 = {make_variant(drop).key: fid for drop, fid in TAB4.items()}  # the paper's Tab. 4 FIDs by network
CIRCLED = dict(zip("12345678", "①②③④⑤⑥⑦⑧", strict=True))
SPREAD = "std"  # what ± means: the sample standard deviation over seeds (ddof=1)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Finished rows, one per (study, key): a trial re-run after a crash counts once (its latest row)."""
    if df.empty or "status" not in df:
        return df.iloc[0:0]
    ok = df[df["status"] == "ok"]
    if "timestamp" in ok:
        ok = ok.sort_values("timestamp")
    return ok.drop_duplicates(["study", "key"], keep="last").reset_index(drop=True)


def seed_stats(rows: pd.DataFrame, value: str, by: str = "variant_key") -> pd.DataFrame:
    """Per group: mean, std (ddof=1; NaN for one seed), number of seeds, the seeds' values, and which seeds
    they are (`{value}_seeds`, same order; None per value when the rows have no seed column)."""
    if rows.empty or value not in rows:
        return pd.DataFrame(columns=[by, f"{value}_mean", f"{value}_std", "seeds", f"{value}_values", f"{value}_seeds"])
    if "seed" in rows:
        rows = rows.sort_values("seed", kind="stable")
    g = rows.groupby(by, sort=False)
    return pd.DataFrame({
        f"{value}_mean": g[value].mean(), f"{value}_std": g[value].std(ddof=1), "seeds": g[value].count(),
        f"{value}_values": g[value].apply(lambda s: [float(v) for v in s]),
        f"{value}_seeds": g["seed"].apply(list) if "seed" in rows else g[value].apply(lambda v: [None] * len(v)),
    }).reset_index()


LEVEL = 0.95  # confidence level of every interval in the tables
PAIRED, WELCH = "paired-t", "welch-t"  # the tests a difference can come from, as the CSV's delta_test names them
TEST_NAMES = {PAIRED: "paired t", WELCH: "Welch t"}  # and as the tables' words and the plot name them
TEST = (f"{LEVEL:.0%} confidence interval from a paired t test over the seeds a row shares with the reference "
        "(each seed's difference to the reference trained and sampled with the same seed, t at n−1 degrees of "
        "freedom for n paired seeds; seeds only one side has are left out), or, where they share fewer than two "
        "seeds, from Welch's t on the difference of their means (unequal variances, Welch-Satterthwaite degrees "
        "of freedom)")


def welch_ci(values: list[float], reference: list[float], level: float = LEVEL) -> tuple[float, float, float] | None:
    """(lower, upper, df) of the `level` confidence interval of mean(values) - mean(reference), Welch's t test;
    None with fewer than two values on either side (one seed shows no noise, so nothing can be told apart)."""
    from scipy import stats

    a, b = [float(v) for v in values], [float(v) for v in reference]
    if len(a) < 2 or len(b) < 2:
        return None
    delta = sum(a) / len(a) - sum(b) / len(b)
    va, vb = pd.Series(a).var(ddof=1) / len(a), pd.Series(b).var(ddof=1) / len(b)  # squared standard errors
    se = math.sqrt(va + vb)
    if se == 0:
        return delta, delta, math.inf
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return delta - half, delta + half, df


def paired_ci(differences: list[float], level: float = LEVEL) -> tuple[float, float, float] | None:
    """(lower, upper, df) of the `level` confidence interval of the mean of per-seed differences (a row's FID
    minus the reference's at the same seed), paired t test: sd(differences) / sqrt(n), t at n - 1 degrees of
    freedom; None with fewer than two differences."""
    from scipy import stats

    d = [float(v) for v in differences]
    if len(d) < 2:
        return None
    mean = sum(d) / len(d)
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * pd.Series(d).std(ddof=1) / math.sqrt(len(d))
    return mean - half, mean + half, float(len(d) - 1)


class Delta(NamedTuple):
    """A row against a reference: the signed difference, its interval (None: one seed on a side, nothing can be
    told apart), the test that gave it (PAIRED, WELCH or None) and how many seeds it paired (0 unless paired)."""

    delta: float
    ci: tuple[float, float, float] | None
    test: str | None
    n_paired: int


def compare(values: list[float], reference: list[float], seeds: list | None = None,
            reference_seeds: list | None = None, level: float = LEVEL) -> Delta:
    """`values` against `reference`, each seed's FID, with the seeds they came from (None: not known, never
    paired). The seed fixes the data order and every noise draw, which all variants trained with it share, so
    it shifts their FIDs together: where the two share two seeds or more, the paired test over those seeds
    removes that shift (seeds only one side has are left out). Otherwise Welch's t over all seeds of each side,
    and with one seed on a side no interval (the difference of means stays, but the tables do not sign it)."""
    mine, theirs = _by_seed(values, seeds), _by_seed(reference, reference_seeds)
    shared = [s for s in mine if s in theirs]
    if len(shared) >= 2:
        diffs = [mine[s] - theirs[s] for s in shared]
        return Delta(sum(diffs) / len(diffs), paired_ci(diffs, level), PAIRED, len(shared))
    ci = welch_ci(values, reference, level)
    return Delta(sum(values) / len(values) - sum(reference) / len(reference), ci, WELCH if ci else None, 0)


def _by_seed(values: list[float], seeds: list | None) -> dict:
    """{seed: value} for the values whose seed is known."""
    return {s: float(v) for s, v in zip(seeds, values, strict=True) if s is not None} if seeds else {}


def verdict(ci: tuple[float, float, float] | None) -> str | None:
    """'worse' / 'better' when the interval excludes 0 (FID: higher is worse), 'not distinguishable' when it
    includes 0, None without an interval (one seed)."""
    if ci is None:
        return None
    lo, hi, _ = ci
    return "worse" if lo > 0 else "better" if hi < 0 else "not distinguishable"


def fid_noise(half_a: list[float], half_b: list[float]) -> float:
    """FID's own sampling noise at the full sample count, from each run's FIDs of two disjoint halves of its
    samples: Var(a - b) = 2 s_half^2 and variance ~ 1/n give s_full = sqrt(mean((a - b)^2)) / 2 (RMS over
    the runs). NaN when no run recorded halves."""
    pairs = [(a, b) for a, b in zip(half_a, half_b, strict=True) if not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return math.nan
    return math.sqrt(sum((a - b) ** 2 for a, b in pairs) / len(pairs)) / 2


def _table(rows: pd.DataFrame, order: list[str], paper_col: str, paper_fid, label_fn) -> pd.DataFrame:
    """One line per network (variant_key): labels, component flags, FID mean/std over seeds, the FID difference
    to the table's reference network (order[0]: the full DiM) with the test that gave it (`compare`) and whether
    their seeds are apart, the paper's FID (paper_fid(key, first_row) -> float or NaN), in `order` first."""
    first = rows.drop_duplicates("variant_key").set_index("variant_key")
    stats = seed_stats(rows, "fid").set_index("variant_key")
    loss = seed_stats(rows, "final_loss").set_index("variant_key")
    keys = [k for k in order if k in first.index] + sorted(k for k in first.index if k not in order)
    ref = order[0] if order and order[0] in first.index else None
    others = [k for k in keys if ref is not None and k != ref]
    deltas = {k: compare(stats.loc[k, "fid_values"], stats.loc[ref, "fid_values"], stats.loc[k, "fid_seeds"],
                         stats.loc[ref, "fid_seeds"]) for k in others}
    cis = {k: d.ci for k, d in deltas.items()}
    halves = {k: ([math.nan], [math.nan]) for k in keys}
    if {"fid_half_a", "fid_half_b"} <= set(rows):
        for k, g in rows.groupby("variant_key"):
            halves[k] = (list(g["fid_half_a"].astype(float)), list(g["fid_half_b"].astype(float)))
    return pd.DataFrame({
        "variant": [label_fn(first.loc[k]) for k in keys],
        **{c.abbrev: [bool(first.loc[k, c.name]) for k in keys] for c in COMPONENTS.values()},
        "scan_patterns": [str(first.loc[k, "scan_patterns"]) for k in keys],
        "fid_mean": [stats.loc[k, "fid_mean"] for k in keys],
        "fid_std": [stats.loc[k, "fid_std"] for k in keys],
        "seeds": [int(stats.loc[k, "seeds"]) for k in keys],
        "fid_values": [stats.loc[k, "fid_values"] for k in keys],
        "fid_seeds": [stats.loc[k, "fid_seeds"] for k in keys],
        "fid_delta": [deltas[k].delta if k in others else math.nan for k in keys],
        "fid_delta_lo": [cis[k][0] if cis.get(k) else math.nan for k in keys],
        "fid_delta_hi": [cis[k][1] if cis.get(k) else math.nan for k in keys],
        "fid_delta_df": [cis[k][2] if cis.get(k) else math.nan for k in keys],
        "delta_test": pd.Series([deltas[k].test if k in others else None for k in keys], dtype=object),
        "n_paired": [deltas[k].n_paired if k in others else 0 for k in keys],
        "verdict": pd.Series([verdict(cis[k]) if k in others else None for k in keys], dtype=object),
        "fid_noise": [fid_noise(*halves[k]) for k in keys],
        "reference": label_fn(first.loc[ref]) if ref is not None else "",
        "final_loss_mean": [loss.loc[k, "final_loss_mean"] if k in loss.index else math.nan for k in keys],
        "params_m": [first.loc[k, "params_m"] for k in keys],
        "gflops": [first.loc[k, "gflops"] for k in keys],
        paper_col: [paper_fid(k, first.loc[k]) for k in keys],
        "variant_key": keys,
    })


def _grid_rows(df: pd.DataFrame) -> pd.DataFrame:
    rows = ok_rows(df)
    if rows.empty:
        return rows
    rows = rows[rows.get("kind", pd.Series("grid", index=rows.index)) == "grid"]
    return rows[rows["fid"].notna()] if "fid" in rows else rows.iloc[0:0]


def _flags(row: pd.Series) -> dict[str, bool]:
    return {c: bool(row[c]) for c in COMPONENTS}


def ablation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Tab. 4: DiM and its ablations (rows that scan 1234, or only 1 with multi_scan off), paper order first."""
    rows = _grid_rows(df)
    if rows.empty:
        return rows
    rows = rows[rows["scan_patterns"].astype(str).isin(TAB4_PATTERNS)]
    if rows.empty:
        return rows
    return _table(rows, list(PAPER_TAB4), PAPER_COL["tab4"], lambda k, r: PAPER_TAB4.get(k, math.nan),
                  lambda r: variant_label(_flags(r), minus="−"))


def scan_table(df: pd.DataFrame) -> pd.DataFrame:
    """Tab. 6: scan patterns, rows with long skips, pad tokens and convs all on; Tab. 6's order first."""
    rows = _grid_rows(df)
    if rows.empty:
        return rows
    rows = rows[[tab6_network(_flags(r)) for _, r in rows.iterrows()]]
    if rows.empty:
        return rows
    order = [make_variant((), p).key for p in TAB6_PATTERNS]
    return _table(rows, order, PAPER_COL["tab6"], lambda k, r: TAB6.get(str(r["scan_patterns"]), math.nan),
                  lambda r: str(r["scan_patterns"]))


def sizes_table() -> pd.DataFrame:
    """Tab. 1: DiM-S/L/H (32x32 input, as the paper counts them) beside the paper's numbers.

    Counted by dimstudy.flops.summarize: parameters, and GMACs at batch 1 with and without the pad tokens.
    """
    rows = []
    for name in ("dim_s_2", "dim_l_2", "dim_h_2"):
        s = _summarize(name, 32)
        rows.append({"model": name, "input": s["input"], "blocks": s["blocks"], "width": s["width"],
                     "params (M)": s["params_m"], "GFLOPs": s["gflops"], "GFLOPs w/o pads": s["gflops_no_pads"],
                     "paper params (M) (Tab. 1)": s["paper_params_m"], "paper GFLOPs (Tab. 1)": s["paper_gflops"]})
    return pd.DataFrame(rows)


@functools.cache
def _summarize(name: str, resolution: int) -> dict:
    """dimstudy.flops.summarize, once per process (counting DiM-H's FLOPs takes a few seconds)."""
    from dimstudy.flops import summarize

    return summarize(name, resolution)


def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """Sweep trials, best first: status, the sampled values, final loss and FID."""
    if df.empty or "kind" not in df:
        return pd.DataFrame()
    rows = df[df["kind"] == "sweep"]
    if rows.empty:
        return rows
    if "timestamp" in rows:
        rows = rows.sort_values("timestamp")
    rows = rows.drop_duplicates(["study", "key"], keep="last")
    params = [c for c in rows.columns if c.startswith("params.")]
    cols = ["study", "trial", "status", *params, *(c for c in ("final_loss", "fid", "num_samples", "wall_s") if c in rows)]
    metric = "fid" if "fid" in rows and rows["fid"].notna().any() else "final_loss"
    out = rows[cols].rename(columns={c: c.removeprefix("params.") for c in params})
    return out.sort_values(metric, na_position="last").reset_index(drop=True)


# -- rendering ----------------------------------------------------------------------------------------------
def mean_spread(mean: float, std: float, n: int, digits: int = 2) -> str:
    """'12.34 ± 0.56' for several seeds, '12.34' for one, '' for none."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if n > 1 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


ONE_SEED = "one seed: cannot be told apart"


def delta_cell(delta: float, lo: float, hi: float, said: str | None, test: str = "") -> str:
    """'+21.27 [+8.12, +34.42] worse', '+7.60 [−50.1, +65.3] not distinguishable', 'one seed: cannot be told
    apart' (no signed difference without an interval), '' (the reference row); `test` ('paired t, 2 seeds'),
    when given, in brackets after the words."""
    if delta is None or math.isnan(delta):
        return ""
    if said is None:
        return ONE_SEED
    return f"{delta:+.2f} [{lo:+.2f}, {hi:+.2f}] {said}{f' ({test})' if test else ''}".replace("-", "−")


def one_seed_only(table: pd.DataFrame) -> bool:
    """No row has an interval: every comparison involves a single seed."""
    return "verdict" in table and table["fid_delta"].notna().any() and table["verdict"].isna().all()


def _tested(table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose difference has an interval (a test gave it)."""
    return table[table["delta_test"].notna()] if "delta_test" in table else table.iloc[0:0]


def delta_test_label(test: str | None, n_paired: int) -> str:
    """'paired t, 2 seeds', 'Welch t', '' (no test)."""
    return f"{TEST_NAMES[test]}, {n_paired} seeds" if test == PAIRED else TEST_NAMES.get(test, "")


def mixed_tests(table: pd.DataFrame) -> bool:
    """Whether the rows' intervals come from more than one test, or pair different numbers of seeds: then each
    difference cell names its own (the note under the table can only say it for all rows at once)."""
    tested = _tested(table)
    return len(set(zip(tested["delta_test"], tested["n_paired"], strict=True))) > 1


def tests_named(table: pd.DataFrame) -> str:
    """'paired t', 'Welch t' or 'paired t or Welch t': the tests behind the table's intervals, for the plot."""
    return " or ".join(TEST_NAMES[t] for t in dict.fromkeys(_tested(table)["delta_test"]))


def table_note(table: pd.DataFrame) -> str:
    """What the difference column means, under the table: the tests, or that one seed tells nothing apart."""
    if "fid_delta" not in table or not table["fid_delta"].notna().any():
        return ""
    ref = table["reference"].iloc[0]
    if one_seed_only(table):
        return (f"One seed per row: no row can be told apart from {ref} (a single run shows no seed noise), so no "
                "signed differences are shown and no order of the damage is compared with the paper's.")
    tested, ref_seeds = _tested(table), table["seeds"].iloc[0]
    paired, welch = tested[tested["delta_test"] == PAIRED], tested[tested["delta_test"] == WELCH]
    marked = " (rows so marked)" if mixed_tests(table) else ""
    tests = []
    if not paired.empty:
        left_out = ((paired["n_paired"] < paired["seeds"]) | (paired["n_paired"] < ref_seeds)).any()
        tests.append(f"a paired t test over seeds{marked}: each seed's difference to {ref} trained and sampled with "
                     "the same seed (the seed fixes the data order and every noise draw, which all rows share, so "
                     f"it shifts their FIDs together), Δ the mean of those differences over the "
                     f"{' or '.join(map(str, sorted(set(paired['n_paired']))))} seeds both have, t at n − 1 degrees of freedom for n "
                     "paired seeds" + ("; seeds only one side has are left out" if left_out else ""))
    if not welch.empty:
        tests.append(f"Welch's t{marked} where a row shares fewer than two seeds with {ref}: Δ the row's mean "
                     f"minus {ref}'s (unequal variances, Welch-Satterthwaite degrees of freedom)")
    note = (f"Δ FID vs {ref}, with its {LEVEL:.0%} confidence interval from {'; or '.join(tests)}. A row whose "
            f"interval includes 0 is not distinguishable from {ref}.")
    if table["fid_noise"].notna().any():
        note += (" FID noise: FID's own sampling noise at this sample count, from the FIDs of two disjoint halves "
                 "of each run's samples (RMS over seeds of |a − b| / 2); it is part of the seed spread.")
    return note


def display(table: pd.DataFrame, fid_header: str = "FID (ours)") -> pd.DataFrame:
    """Text cells in the paper's layout: component check marks, patterns, FID mean ± std, seeds, paper FID."""
    if table.empty:
        return table
    paper_col = next(c for c in table.columns if c.startswith("paper FID"))
    out = pd.DataFrame()
    if paper_col == PAPER_COL["tab6"]:
        out["Scanning patterns"] = [f"{''.join(CIRCLED[c] for c in p)} ({p})" for p in table["scan_patterns"]]
    else:
        for c in COMPONENTS.values():
            out[c.abbrev] = ["✓" if v else "" for v in table[c.abbrev]]
        out["variant"] = table["variant"]
    out[fid_header] = [mean_spread(m, s, n) for m, s, n in zip(table["fid_mean"], table["fid_std"], table["seeds"], strict=True)]
    out["seeds"] = table["seeds"].astype(int)
    if "fid_noise" in table and table["fid_noise"].notna().any():
        out["FID noise"] = [f"± {v:.2f}" if not math.isnan(v) else "" for v in table["fid_noise"]]
    if "fid_delta" in table and table["fid_delta"].notna().any():
        named = mixed_tests(table)
        out[f"Δ FID vs {table['reference'].iloc[0]} ({LEVEL:.0%} CI)"] = [
            delta_cell(d, lo, hi, v, delta_test_label(t, n) if named else "") for d, lo, hi, v, t, n in
            zip(table["fid_delta"], table["fid_delta_lo"], table["fid_delta_hi"], table["verdict"],
                table["delta_test"], table["n_paired"], strict=True)]
    out["final loss"] = [mean_spread(v, math.nan, 1, 4) for v in table["final_loss_mean"]]
    out["params (M)"] = [f"{v:.3g}" for v in table["params_m"]]
    out[paper_col] = [f"{v:.2f}" if not math.isnan(v) else "—" for v in table[paper_col]]
    return out


def ordering_claim(table: pd.DataFrame) -> str:
    """Whether the order of the damage matches the paper's, computed from the rows distinguishable from the
    reference (the full model): their order by mean Δ FID against the order of the paper's FIDs of the same
    rows, and whether neighbours in that order are themselves distinguishable."""
    if "verdict" not in table or not table["fid_delta"].notna().any():
        return ""
    paper_col = next(c for c in table.columns if c.startswith("paper FID"))
    ref = table["reference"].iloc[0]
    if one_seed_only(table):
        return ""  # table_note says it
    worse = table[table["verdict"] == "worse"].sort_values("fid_delta", ascending=False)
    better = list(table.loc[table["verdict"] == "better", "variant"])
    nd = list(table.loc[table["verdict"] == "not distinguishable", "variant"])
    single = list(table.loc[table["fid_delta"].notna() & table["verdict"].isna(), "variant"])  # one seed on a side
    parts = []
    if worse.empty:
        parts.append(f"No row is distinguishably worse than {ref}.")
    else:
        listed = ", ".join(f"{r.variant} ({r.fid_delta:+.1f})" for r in worse.itertuples())
        parts.append(f"Distinguishably worse than {ref}: {listed}.")
    if better:
        parts.append(f"Distinguishably better than {ref}: {', '.join(better)}.")
    if nd:
        parts.append(f"Not distinguishable from {ref}: {', '.join(nd)}.")
    if single:
        parts.append(f"One seed, so not told apart from {ref}: {', '.join(single)}.")
    if len(worse) < 2:
        parts.append("Fewer than two rows are distinguishably worse, so no order of the damage can be compared "
                     "with the paper's.")
        return " ".join(parts).replace("-", "−")
    ours = list(worse["variant"])
    paper = worse.dropna(subset=[paper_col]).sort_values(paper_col, ascending=False)
    if len(paper) < len(worse):
        parts.append("Some of these rows have no paper number, so the order is not compared.")
        return " ".join(parts).replace("-", "−")
    same = ours == list(paper["variant"])
    paper_text = " > ".join(f"{v} ({f:.2f})" for v, f in zip(paper["variant"], paper[paper_col], strict=True))
    parts.append(f"Their order by damage, {' > '.join(ours)}, {'matches' if same else 'does not match'} the paper's "
                 f"for the same rows ({paper_text}).")
    values, seeds = (dict(zip(table["variant"], table[c], strict=True)) for c in ("fid_values", "fid_seeds"))
    ties = [f"{a} vs {b}" for a, b in zip(ours, ours[1:])  # neighbours compared as rows are: paired where they can be
            if verdict(compare(values[a], values[b], seeds[a], seeds[b]).ci) in ("not distinguishable", None)]
    if ties:
        parts.append(f"Neighbours in that order that are not distinguishable from each other: {'; '.join(ties)}, "
                     "so their places are not settled.")
    return " ".join(parts).replace("-", "−")


def markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    """A plain Markdown table (no `tabulate` dependency)."""
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else floatfmt.format(v)
        return str(v)

    frame = frame.reset_index() if frame.index.name or not isinstance(frame.index, pd.RangeIndex) else frame
    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def latex(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs tabular (needs \\usepackage{booktabs} and amssymb for \\checkmark) of text cells."""
    def cell(v) -> str:
        s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("✓", r"\checkmark"), ("±", r"$\pm$"), ("−", "$-$"), ("—", "--")):
            s = s.replace(a, b)
        for k, c in CIRCLED.items():
            s = s.replace(c, rf"\textcircled{{{k}}}")
        return s

    cols = list(frame.columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{cell(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule", " & ".join(cell(c) for c in cols) + r" \\",
              r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The numeric table for CSV: per-seed values (and their seeds) joined by ';' so the file stays one line per
    variant."""
    out = table.copy()
    if "fid_values" in out:
        out["fid_values"] = out["fid_values"].map(lambda vs: ";".join(f"{v:.6g}" for v in vs))
    if "fid_seeds" in out:
        out["fid_seeds"] = out["fid_seeds"].map(lambda ss: ";".join("" if s is None else str(s) for s in ss))
    return out
