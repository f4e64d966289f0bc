"""The report: Tab. 4/6/1 tables (Markdown, LaTeX, CSV) from synthetic rows with known mean ± std, and the plots."""

import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from dimstudy.cli import study as study_cli
from dimstudy.report import build, tables
from dimstudy.results import append_row, read_table
from dimstudy.study.grid import make_variant
from dimstudy.study.rows import read_runs, write_row

FIDS = {  # drops -> FID per seed 0, 1, 2; mean ± std: full 11 ± 1, -LFE 12 ± 1, -PT 21 ± 1, -MS 30 (one seed)
    (): [10.0, 11.0, 12.0],
    ("local_conv",): [11.0, 13.0, 12.0],  # minus full's at the same seed: 1, 2, 0 (mean 1, sd 1)
    ("padding_tokens",): [21.0, 20.0, 22.0],  # 11, 9, 10 (mean 10, sd 1)
    ("multi_scan",): [30.0],
    ("long_skip", "padding_tokens"): [40.0],  # not a row of the paper's
}
SCAN12 = [15.0, 17.0]  # Tab. 6's "12": 16 ± sqrt(2)


def row(variant, seed, fid, study_dir: Path, minute: int = 0, **kw) -> dict:
    curve = study_dir / "curves" / f"{variant.key}-seed{seed}.csv"
    curve.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": range(1, 51), "loss": [1.0 / (1 + s / 10) + 0.01 * seed for s in range(50)]}).to_csv(curve, index=False)
    return {"study": "syn", "kind": "grid", "preset": "smoke", "trial": seed, "key": f"{variant.key}/seed{seed}",
            "variant": variant.label, "variant_key": variant.key, "seed": seed, "status": "ok", "model": "dim_tiny_2",
            **variant.components, "scan_patterns": variant.patterns, "params_m": 0.24, "gflops": 0.03,
            "dataset": "digits", "resolution": 16, "steps": 250, "batch_size": 16, "lr": 1e-3, "ema_decay": 0.98,
            "final_loss": 0.1 + fid / 1000, "fid": fid, "num_samples": 200, "num_reference": 500, "sampler": "dpm_solver",
            "sample_steps": 20, "reference": "digits-all-16px-n500-seed0", "device": "cpu", "gpu": "", "cpu": "x86_64",
            "wall_s": 100.0, "timestamp": f"2026-01-01T00:{minute:02d}:00+00:00", "git_sha": "abc",
            "loss_curve": f"curves/{variant.key}-seed{seed}.csv", **kw}


@pytest.fixture()
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    study_dir = root / "syn"
    for drops, fids in FIDS.items():
        for seed, fid in enumerate(fids):
            write_row(row(make_variant(drops), seed, fid, study_dir), study_dir)
    for seed, fid in enumerate(SCAN12):
        write_row(row(make_variant((), "12", label="12"), seed, fid, study_dir), study_dir)
    # a superseded row (the same trial finished again later: the later one counts) and a failed trial
    write_row(row(make_variant(()), 0, 99.0, study_dir, minute=0), study_dir)
    write_row(row(make_variant(()), 0, 10.0, study_dir, minute=5), study_dir)
    write_row({**row(make_variant(("local_conv",)), 0, math.nan, study_dir), "status": "failed", "fid": None,
               "error": "RuntimeError: out of memory"}, study_dir)
    return root


def test_ablation_table_has_the_papers_layout_and_known_mean_and_std(results):
    t = tables.ablation_table(read_runs(results, "syn"))
    assert list(t["variant"]) == ["full", "−LFE", "−PT", "−MS", "−LSC−PT"]  # the paper's order first, then the rest
    assert list(t["fid_mean"]) == [11.0, 12.0, 21.0, 30.0, 40.0] and list(t["seeds"]) == [3, 3, 3, 1, 1]
    assert list(t["fid_std"][:3]) == pytest.approx([1.0, 1.0, 1.0]) and math.isnan(t["fid_std"][3])
    paper = t["paper FID (Tab. 4)"]
    assert list(paper[:4]) == [2.92, 3.07, 2.94, 17.60] and math.isnan(paper[4])
    assert [list(t.loc[i, ["MS", "LSC", "PT", "LFE"]]) for i in (0, 2)] == [[True] * 4, [True, True, False, True]]

    # paired t by hand: the three seeds both rows have give differences of sd 1, so se = 1 / sqrt(3), df = 2;
    # t(0.975, 2) = 4.302653 (any t table), so the half-width is 4.302653 / sqrt(3) = 2.484138.
    half = 4.302653 / math.sqrt(3)
    assert list(t["fid_delta"][1:]) == [1.0, 10.0, 19.0, 29.0] and math.isnan(t["fid_delta"][0])
    assert list(t["delta_test"]) == [None, "paired-t", "paired-t", None, None] and list(t["n_paired"]) == [0, 3, 3, 0, 0]
    assert t["fid_delta_df"][1] == pytest.approx(2.0) and t["fid_delta_df"][2] == pytest.approx(2.0)
    assert [t["fid_delta_lo"][1], t["fid_delta_hi"][1]] == pytest.approx([1 - half, 1 + half], abs=1e-5)
    assert [t["fid_delta_lo"][2], t["fid_delta_hi"][2]] == pytest.approx([10 - half, 10 + half], abs=1e-5)
    assert list(t["verdict"]) == [None, "not distinguishable", "worse", None, None]  # one seed: no verdict

    shown = tables.display(t, "FID (ours, 200 samples)")
    delta = shown["Δ FID vs full (95% CI)"]
    assert list(delta) == ["", "+1.00 [−1.48, +3.48] not distinguishable", "+10.00 [+7.52, +12.48] worse",
                           "one seed: cannot be told apart", "one seed: cannot be told apart"]
    assert list(shown.columns[:5]) == ["MS", "LSC", "PT", "LFE", "variant"]
    assert list(shown["FID (ours, 200 samples)"]) == ["11.00 ± 1.00", "12.00 ± 1.00", "21.00 ± 1.00", "30.00", "40.00"]
    assert list(shown["paper FID (Tab. 4)"]) == ["2.92", "3.07", "2.94", "17.60", "—"]
    md = tables.markdown_table(shown)
    assert "| ✓ | ✓ | ✓ | ✓ | full | 11.00 ± 1.00 | 3 |" in md and "| ✓ | ✓ |  | ✓ | −PT | 21.00 ± 1.00 | 3 |" in md
    tex = tables.latex(shown, "Tab. 4", "tab:x")
    assert r"\toprule" in tex and r"\checkmark & \checkmark" in tex and r"11.00 $\pm$ 1.00" in tex
    assert "paper FID (Tab. 4)" in tex and r"$-$PT" in tex and "not distinguishable" in tex
    claim = tables.ordering_claim(t)
    assert "Distinguishably worse than full: −PT (+10.0)." in claim and "Not distinguishable from full: −LFE." in claim
    assert "One seed, so not told apart from full: −MS, −LSC−PT." in claim
    assert "Fewer than two rows are distinguishably worse, so no order" in claim


def test_scan_table_reuses_the_shared_networks(results):
    t = tables.scan_table(read_runs(results, "syn"))
    assert list(t["scan_patterns"]) == ["1234", "12", "1"]  # 1234 is the full model, 1 is -MS
    assert list(t["fid_mean"]) == [11.0, 16.0, 30.0]
    assert list(t["paper FID (Tab. 6)"]) == [2.92, 2.91, 17.60]
    shown = tables.display(t)
    assert list(shown["Scanning patterns"]) == ["①②③④ (1234)", "①② (12)", "① (1)"]
    assert list(shown["Δ FID vs 1234 (95% CI)"])[2] == "one seed: cannot be told apart"
    assert r"\textcircled{1}\textcircled{2}" in tables.latex(shown)


@pytest.mark.parametrize("values, reference, expected", [
    # equal n and variance: df = 2 (n - 1); t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445 (tables)
    ([20.0, 22.0], [10.0, 12.0], (10 - 4.302653 * math.sqrt(2), 10 + 4.302653 * math.sqrt(2), 2.0)),
    ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], (-1 - 2.776445 * math.sqrt(2 / 3), -1 + 2.776445 * math.sqrt(2 / 3), 4.0)),
    # unequal: va = 9/3 = 3, vb = 0.5/2 = 0.25; df = 3.25^2 / (3^2/2 + 0.25^2/1) = 10.5625 / 4.5625
    ([10.0, 13.0, 16.0], [0.0, 1.0], None),
    ([20.0], [10.0, 12.0], None), ([20.0, 21.0], [10.0], None),  # one seed shows no noise: no interval
])
def test_welch_interval_equals_the_hand_computed_one(values, reference, expected):
    ci = tables.welch_ci(values, reference)
    if len(values) < 2 or len(reference) < 2:
        assert ci is None and tables.verdict(ci) is None
        return
    if expected is None:  # the unequal case: check df by hand, the interval by its definition
        from scipy import stats

        df = 3.25**2 / (3**2 / 2 + 0.25**2 / 1)
        expected = (12.5 - stats.t.ppf(0.975, df) * math.sqrt(3.25), 12.5 + stats.t.ppf(0.975, df) * math.sqrt(3.25), df)
    assert ci == pytest.approx(expected, abs=1e-5)
    lo, hi, _ = ci
    assert tables.verdict(ci) == ("worse" if lo > 0 else "better" if hi < 0 else "not distinguishable")


def test_fid_noise_from_two_halves_and_the_table_column(results):
    assert tables.fid_noise([10.0, 20.0], [12.0, 16.0]) == pytest.approx(math.sqrt((4 + 16) / 2) / 2)
    assert math.isnan(tables.fid_noise([math.nan], [math.nan]))
    df = read_runs(results, "syn")
    t = tables.ablation_table(df)
    assert t["fid_noise"].isna().all() and "FID noise" not in tables.display(t)  # old rows: no halves, no column
    df["fid_half_a"], df["fid_half_b"] = df["fid"] + 1.0, df["fid"] - 1.0  # |a - b| = 2 for every run
    t = tables.ablation_table(df)
    assert list(t["fid_noise"]) == pytest.approx([1.0] * 5) and list(tables.display(t)["FID noise"])[0] == "± 1.00"
    assert "two disjoint halves" in tables.table_note(t)


def _table(fids: dict) -> pd.DataFrame:
    """Tab. 4 of drops -> FIDs: a list (seeds 0, 1, ...) or {seed: FID}."""
    rows = [{"study": "o", "kind": "grid", "key": f"{make_variant(d).key}/seed{s}", "variant": make_variant(d).label,
             "variant_key": make_variant(d).key, "seed": s, "status": "ok", **make_variant(d).components,
             "scan_patterns": make_variant(d).patterns, "fid": f, "final_loss": 0.1, "params_m": 1.0, "gflops": 1.0}
            for d, values in fids.items() for s, f in (values.items() if isinstance(values, dict) else enumerate(values))]
    return tables.ablation_table(pd.DataFrame(rows))


def test_the_ordering_claim_is_computed_from_the_distinguishable_rows():
    full = [10.0, 11.0, 12.0]
    same = _table({(): full, ("long_skip",): [15.0, 16.0, 17.0], ("multi_scan",): [30.0, 31.0, 32.0],
                   ("padding_tokens",): [11.5, 10.5, 12.5]})  # per seed: +1.5, -0.5, +0.5
    claim = tables.ordering_claim(same)
    assert "Distinguishably worse than full: −MS (+20.0), −LSC (+5.0)." in claim
    assert "Their order by damage, −MS > −LSC, matches the paper's for the same rows (−MS (17.60) > −LSC (6.23))." in claim
    assert "Not distinguishable from full: −PT." in claim and "not settled" not in claim
    swapped = tables.ordering_claim(_table({(): full, ("long_skip",): [30.0, 31.0, 32.0], ("multi_scan",): [15.0, 16.0, 17.0]}))
    assert "Their order by damage, −LSC > −MS, does not match the paper's" in swapped
    # neighbours are compared as the rows are, paired by seed: -MS minus -LSC is +1.5, -0.5, +0.5
    close = tables.ordering_claim(_table({(): full, ("long_skip",): [20.0, 21.0, 22.0], ("multi_scan",): [21.5, 20.5, 22.5]}))
    assert "matches the paper's" in close and "−MS vs −LSC, so their places are not settled" in close
    one = _table({(): [10.0], ("multi_scan",): [30.0], ("long_skip",): [20.0]})
    assert tables.ordering_claim(one) == "" and "no row can be told apart" in tables.table_note(one)
    assert set(tables.display(one)["Δ FID vs full (95% CI)"][1:]) == {"one seed: cannot be told apart"}


def test_paired_interval_equals_the_hand_computed_one():
    from scipy import stats

    # two seeds: differences 28.1 and 30.1 (mean 29.1, sd sqrt(2)), t(0.975, 1) = 12.706205 (any t table)
    half = 12.706205 * math.sqrt(2) / math.sqrt(2)
    assert tables.paired_ci([28.1, 30.1]) == pytest.approx((29.1 - half, 29.1 + half, 1.0), abs=1e-5)
    assert tables.paired_ci([5.0]) is None and tables.paired_ci([]) is None
    assert tables.paired_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread at all: a zero-width interval
    # through compare: the seeds pair the values, in whatever order they come
    d = tables.compare([31.0, 20.0, 25.0], [22.0, 10.0, 14.0], [2, 0, 1], [2, 0, 1])  # differences 9, 10, 11
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert d.test == "paired-t" and d.n_paired == 3 and d.delta == pytest.approx(10.0)
    assert d.ci == pytest.approx((10 - half, 10 + half, 2.0))
    assert tables.compare([20.0, 22.0], [10.0, 12.0]).test == "welch-t"  # seeds not known: never paired


def test_a_shared_seed_shift_is_worse_by_the_paired_test_though_welch_cannot_tell():
    # the seed shifts both rows by 10 per seed; −LSC is 2 ± 0.5 above full at every seed
    full, lsc = [10.0, 20.0, 30.0], [12.0, 22.5, 31.5]
    assert tables.verdict(tables.welch_ci(lsc, full)) == "not distinguishable"
    t = _table({(): full, ("long_skip",): lsc})
    half = 4.302653 * 0.5 / math.sqrt(3)  # sd of (2, 2.5, 1.5) is 0.5; t(0.975, 2) = 4.302653
    assert [t["fid_delta_lo"][1], t["fid_delta_hi"][1]] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    assert t["verdict"][1] == "worse" and t["delta_test"][1] == "paired-t" and t["n_paired"][1] == 3
    shown = tables.display(t)
    cell = "+2.00 [+0.76, +3.24] worse"
    assert list(shown["Δ FID vs full (95% CI)"]) == ["", cell]
    assert f"| {cell} |" in tables.markdown_table(shown)
    note = tables.table_note(t)
    assert "paired t test over seeds: each seed's difference to full trained and sampled with the same seed" in note
    assert "over the 3 seeds both have" in note and "Welch" not in note and "left out" not in note
    tex = tables.latex(shown, note)
    assert "& +2.00 [+0.76, +3.24] worse &" in tex and "paired t test over seeds" in tex
    assert tables.ordering_claim(t).startswith("Distinguishably worse than full: −LSC (+2.0).")


def test_the_plot_names_the_test_its_words_come_from(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from dimstudy.report import plots

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plots.plot_fid(_table({(): [10.0, 20.0, 30.0], ("long_skip",): [12.0, 22.5, 31.5]}), tmp_path / "f.png")
    ax = closed[0].axes[0]
    assert "95% paired t CI" in ax.get_title() and "worse" in [x.get_text() for x in ax.texts]


def test_unequal_seed_sets_pair_only_the_shared_seeds_and_fall_back_to_welch():
    from scipy import stats

    full = {0: 10.0, 1: 20.0, 2: 30.0}
    t = _table({(): full,
                ("long_skip",): {1: 25.0, 2: 36.0, 3: 99.0},  # shares 1 and 2: differences 5, 6; seed 3 left out
                ("multi_scan",): {2: 40.0, 3: 44.0},  # shares only 2: Welch over all seeds of each side
                ("padding_tokens",): {0: 50.0}})  # one seed
    assert list(t["variant"]) == ["full", "−PT", "−LSC", "−MS"]  # the paper's order
    assert list(t["delta_test"]) == [None, None, "paired-t", "welch-t"] and list(t["n_paired"]) == [0, 0, 2, 0]
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2)  # sd of (5, 6) is sqrt(0.5)
    assert t["fid_delta"][2] == pytest.approx(5.5)  # not the difference of the means (53.33 - 20)
    assert [t["fid_delta_lo"][2], t["fid_delta_hi"][2], t["fid_delta_df"][2]] == pytest.approx([5.5 - half, 5.5 + half, 1.0])
    welch = tables.welch_ci([40.0, 44.0], [10.0, 20.0, 30.0])
    assert t["fid_delta"][3] == pytest.approx(22.0)
    assert (t["fid_delta_lo"][3], t["fid_delta_hi"][3], t["fid_delta_df"][3]) == pytest.approx(welch)
    shown = tables.display(t)["Δ FID vs full (95% CI)"]  # mixed tests: each cell names its own
    assert shown[2].endswith("(paired t, 2 seeds)") and shown[3].endswith("(Welch t)")
    assert shown[1] == "one seed: cannot be told apart"
    note = tables.table_note(t)
    assert "paired t test over seeds (rows so marked)" in note and "seeds only one side has are left out" in note
    assert "Welch's t (rows so marked) where a row shares fewer than two seeds with full" in note
    assert tables.compare([20.0, 30.0], [10.0, 20.0], [0, 1], [1, 2]).test == "welch-t"  # one shared seed
    assert tables.compare([20.0, 30.0], [10.0], [0, 1], [0]).ci is None  # one seed on a side: no interval


def test_a_table_without_the_full_model_has_no_difference_column(results):
    df = read_runs(results, "syn")
    t = tables.ablation_table(df[df["variant_key"] != make_variant(()).key])
    assert t["fid_delta"].isna().all()
    assert not any(c.startswith("Δ FID") for c in tables.display(t).columns)
    assert tables.table_note(t) == "" and tables.ordering_claim(t) == ""


def test_report_writes_tables_plots_and_says_what_the_numbers_are(results):
    path = build.build_report(results, "syn", log=lambda s: None)
    out = path.parent
    assert path == results / "syn" / "report" / "README.md"
    for name in ("tab4_ablation", "tab6_scans", "tab1_sizes"):
        for ext in (".md", ".tex", ".csv"):
            assert (out / f"{name}{ext}").stat().st_size > 0
    for png in ("fid_tab4.png", "fid_tab6.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(out / "tab4_ablation.csv")
    assert list(csv["fid_mean"]) == [11.0, 12.0, 21.0, 30.0, 40.0] and csv["fid_std"][0] == pytest.approx(1.0)
    assert list(csv["verdict"].fillna("")) == ["", "not distinguishable", "worse", "", ""]
    assert csv["fid_values"][0] == "10;11;12" and csv["paper FID (Tab. 4)"][0] == 2.92
    text = path.read_text()
    assert "**200 samples**" in text and "250 steps" in text and "preset: smoke" in text and "ran on: cpu" in text
    assert "FID (ours, 200 samples)" in text and "paper FID (Tab. 4)" in text and "paper FID (Tab. 6)" in text
    assert "out of memory" in text  # the failed trial is listed
    assert "paired t test over seeds" in text and "Distinguishably worse than full: −PT (+10.0)." in text
    assert list(csv["delta_test"].fillna("")) == ["", "paired-t", "paired-t", "", ""] and list(csv["n_paired"][:3]) == [0, 3, 3]
    assert csv["fid_seeds"][0] == "0;1;2"
    assert "not distinguishable" in (out / "tab4_ablation.md").read_text()
    assert "not distinguishable" in (out / "tab4_ablation.tex").read_text()
    sizes = pd.read_csv(out / "tab1_sizes.csv")
    assert list(sizes["model"]) == ["dim_s_2", "dim_l_2", "dim_h_2"] and list(sizes["paper GFLOPs (Tab. 1)"]) == [12, 94, 210]
    assert "The networks this study trained" in text
    assert "## Speed" not in text  # no speed rows


def test_report_warns_when_the_sampled_ema_was_still_mostly_the_init(results):
    assert "do not measure the networks" not in build.build_report(results, "syn", log=lambda s: None).read_text()
    df = pd.DataFrame([{"ema_decay": 0.999, "steps": 1000}, {"ema_decay": 0.99, "steps": 250}])
    assert "up to 37% of the initial weights (EMA decay 0.99, 0.999 over 250, 1000 steps, no warm-up)" in build.ema_alarm(df)
    df["ema_warmup"] = True  # rows that record it: min(decay, (1+t)/(10+t)) leaves nothing of the init
    assert build.ema_alarm(df) is None
    df["ema_init_share"] = [0.2, 0.0]  # a recorded share wins over the recomputed one
    assert "up to 20%" in build.ema_alarm(df)

    bad = results / "bad"  # a study whose rows say so: the report puts the warning above its tables
    for seed in (0, 1):
        write_row(row(make_variant(()), seed, 300.0, bad, steps=1000, ema_decay=0.999), bad)
    text = build.build_report(results, "bad", log=lambda s: None).read_text()
    assert text.index("do not measure the networks") < text.index("## Tab. 4")


def test_a_study_report_shows_the_resolution_studies_of_its_own_runs_only(results):
    study_dir = results / "syn"
    write_row(row(make_variant(()), 7, 10.0, study_dir, run_dir="runs/syn/full-seed7"), study_dir)
    base = {"method": "direct", "model": "dim_tiny_2", "train_resolution": 16, "resolution": 32, "sampler": "ddim",
            "steps": 10, "theta": None, "eta": None, "finetune_steps": 0, "n_samples": 8, "num_reference": 16,
            "fid": 50.0, "kid_mean": 0.05, "grid": None, "device": "cpu", "gpu": "", "timestamp": "2026-01-01T00:00:00+00:00"}
    append_row("resolution", {**base, "study": "mine", "checkpoint": "/tmp/runs/syn/full-seed7/latest.pt"}, results)
    append_row("resolution", {**base, "study": "theirs", "checkpoint": "runs/other/full-seed0/latest.pt"}, results)
    text = build.build_report(results, "syn", log=lambda s: None).read_text()
    assert "## Resolution" in text and "| mine |" in text and "| theirs |" not in text  # same run, other runs root
    assert build.resolution_section(results, results / "out") is not None  # no filter: every row
    assert build.resolution_section(results, results / "out", {"runs/nowhere"}) is None


def test_a_report_written_elsewhere_links_every_image_relative_to_its_own_folder(results, tmp_path):
    """`report --out DIR` outside the study folder: the links worked only on this machine (absolute) before."""
    study_dir = results / "syn"
    (study_dir / "grids").mkdir()
    Image.new("RGB", (4, 4)).save(study_dir / "grids" / "full-seed0.png")
    write_row(row(make_variant(()), 0, 10.0, study_dir, minute=9, grid="grids/full-seed0.png"), study_dir)
    path = build.build_report(results, "syn", tmp_path / "elsewhere" / "report", log=lambda s: None)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())
    assert links == ["fid_tab4.png", "fid_tab6.png", "loss_curves.png", "../../results/syn/grids/full-seed0.png"]
    assert all((path.parent / link).is_file() for link in links)
    inside = build.build_report(results, "syn", log=lambda s: None).read_text()  # the default place, as committed
    assert "![full](../grids/full-seed0.png)" in inside


def _speed_rows(root: Path, sweep: str, dim_ms=(2.0, 3.0), gpu: str = "FakeGPU") -> None:
    for model, family, ms in (("dim_tiny_2", "dim", dim_ms), ("uvit_tiny_2", "uvit", (1.0, 4.0))):
        for res, m in zip((32, 64), ms, strict=True):
            append_row("speed", {"sweep": sweep, "model": model, "alias": family, "family": family, "resolution": res,
                                 "batch": 1, "dtype": "bf16", "mode": "infer", "status": "ok", "ms": m,
                                 "log10_it_per_ms": math.log10(1 / m), "gpu": gpu, "floor_ms": None,
                                 "timestamp": "2026-01-01T00:00:00+00:00"}, root)


def test_a_study_report_shows_its_own_speed_rows_only(results):
    _speed_rows(results / "other-sweep", "s0", gpu="StaleGPU")  # another folder's sweep: never picked up
    text = build.build_report(results, "syn", log=lambda s: None).read_text()
    assert "## Speed" not in text and "StaleGPU" not in text
    assert not (results / "syn" / "report" / "fig3_speed.png").exists()
    (results / "syn" / "report" / "speed.md").write_text("stale")  # an earlier report's section goes
    build.build_report(results, "syn", log=lambda s: None)
    assert not (results / "syn" / "report" / "speed.md").exists()

    _speed_rows(results / "syn", "s1")  # rows of the study's own
    md = build.speed_section(results, results / "out", study="syn")
    assert md.startswith("## Speed (Fig. 3)") and "FakeGPU" in md and "fig3_speed.png" in md and "StaleGPU" not in md
    assert (results / "out" / "fig3_speed.png").stat().st_size > 0
    text = build.build_report(results, "syn", log=lambda s: None).read_text()
    assert "## Speed (Fig. 3)" in text and "FakeGPU" in text and "StaleGPU" not in text


def test_a_named_speed_sweep_is_shown_by_folder_or_by_id(results):
    _speed_rows(results / "sweeps", "old", dim_ms=(5.0, 6.0), gpu="OldGPU")
    _speed_rows(results / "sweeps", "new", gpu="NewGPU")
    text = build.build_report(results, "syn", log=lambda s: None, speed_sweep="old").read_text()
    assert "OldGPU" in text and "NewGPU" not in text
    text = build.build_report(results, "syn", log=lambda s: None, speed_sweep="sweeps").read_text()  # its latest
    assert "NewGPU" in text and "OldGPU" not in text
    with pytest.raises(ValueError, match="no speed sweep 'nope'.*valid: sweeps, "):
        build.build_report(results, "syn", log=lambda s: None, speed_sweep="nope")


def test_the_speed_plot_is_in_ms_on_a_log_axis(results, monkeypatch):
    import matplotlib.pyplot as plt

    from dimstudy.report.speed import plot_fig3

    _speed_rows(results, "s1")
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)  # keep the figure plot_fig3 made, to read its axes
    plot_fig3(read_table("speed", results), results / "fig3.png")
    ax = closed[0].axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel().startswith("ms per iteration")
    assert sorted(ax.lines[0].get_ydata()) == [2.0, 3.0]  # the ms themselves


def test_other_sections_are_skipped_without_rows(tmp_path):
    assert build.speed_section(tmp_path, tmp_path / "out") is None
    assert build.speed_section(tmp_path, tmp_path / "out", study="syn") is None
    assert build.resolution_section(tmp_path, tmp_path / "out") is None


def test_report_cli(results):
    app = typer.Typer()
    study_cli.register(app)
    res = CliRunner().invoke(app, ["report", "--study", "syn", "--results", str(results)])
    assert res.exit_code == 0, res.output
    assert "README.md" in res.stdout and "fid_tab4.png" in res.stdout
    res = CliRunner().invoke(app, ["report", "--results", str(results)])  # every study under the root
    assert res.exit_code == 0 and "syn" in res.stdout


def test_profile_report_writes_the_rows_as_markdown_and_csv(tmp_path):
    from dimstudy.bench.profile import CATEGORIES
    from dimstudy.report.profile import write_profile

    ok = {"model": "dim_tiny_2", "alias": "dim", "resolution": 16, "batch": 1, "dtype": "fp32", "device": "cpu",
          "wall_ms": 2.0, "wall_ms_iqr": 0.1, "busy_ms": 1.5, **{f"ms_{c}": 0.25 for c in CATEGORIES},
          **{f"pct_{c}": 12.5 for c in CATEGORIES}}
    oom = {"model": "uvit_tiny_2", "resolution": 16, "batch": 1, "dtype": "fp32", "status": "oom", "error": "out of memory"}
    paths = write_profile([ok, oom], str(tmp_path))
    assert paths["md"] == tmp_path / "profile" / "profile_16px_b1_fp32.md"
    md = paths["md"].read_text(encoding="utf-8")
    assert "- uvit_tiny_2: oom (out of memory)" in md and "| category | what | dim ms | dim % | uvit_tiny_2 ms |" in md
    csv = pd.read_csv(paths["csv"])
    assert list(csv["category"]) == list(CATEGORIES) and (csv["dim ms"] == 0.25).all() and (csv["uvit_tiny_2 ms"] == "oom").all()


def test_rows_name_kernel_tunables_only_when_overridden(monkeypatch):
    """A row made under DIMSTUDY_SCAN_* overrides records them; a row with the defaults has no such field."""
    from dimstudy.results import environment

    for k in [k for k in os.environ if k.startswith("DIMSTUDY_SCAN_")]:
        monkeypatch.delenv(k)
    assert "tuning_env" not in environment("cpu")
    monkeypatch.setenv("DIMSTUDY_SCAN_CHUNK", "8")
    monkeypatch.setenv("DIMSTUDY_SCAN_FWD_MAXNREG", "")  # set but empty: the default, as _env_int reads it
    monkeypatch.setenv("DIMSTUDY_SCAN_BWD_MAXNREG", "128")
    assert environment("cpu")["tuning_env"] == {"DIMSTUDY_SCAN_BWD_MAXNREG": "128", "DIMSTUDY_SCAN_CHUNK": "8"}
