"""The report: Tab. 4/6/1 tables (Markdown, LaTeX, CSV) from synthetic rows with known mean ± std, and the plots."""

import math
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from dimstudy.cli import study as study_cli
from dimstudy.report import build, tables
from dimstudy.results import append_row
from dimstudy.study.grid import make_variant
from dimstudy.study.rows import read_runs, write_row

FIDS = {  # drops -> FID per seed; mean ± std: full 11 ± 1, -PT 21 ± sqrt(2), -MS 30 (one seed)
    (): [10.0, 11.0, 12.0],
    ("padding_tokens",): [20.0, 22.0],
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
    assert list(t["variant"]) == ["full", "−PT", "−MS", "−LSC−PT"]  # the paper's order first, then the rest
    assert list(t["fid_mean"]) == [11.0, 21.0, 30.0, 40.0] and list(t["seeds"]) == [3, 2, 1, 1]
    assert t["fid_std"][0] == pytest.approx(1.0) and t["fid_std"][1] == pytest.approx(math.sqrt(2))
    assert math.isnan(t["fid_std"][2])
    paper = t["paper FID (Tab. 4)"]
    assert list(paper[:3]) == [2.92, 2.94, 17.60] and math.isnan(paper[3])
    assert [list(t.loc[i, ["MS", "LSC", "PT", "LFE"]]) for i in range(2)] == [[True] * 4, [True, True, False, True]]

    # the difference to the full model, and whether the seed ranges meet: -PT [20, 22] vs full [10, 11, 12]
    assert list(t["fid_delta"][1:]) == [10.0, 19.0, 29.0] and math.isnan(t["fid_delta"][0])
    assert list(t["seeds_apart"]) == [None, True, None, None]  # -MS and -LSC-PT have one seed: no verdict

    shown = tables.display(t, "FID (ours, 200 samples)")
    assert list(shown["Δ FID vs full"]) == ["", "+10.00 (seeds apart)", "+19.00", "+29.00"]
    assert list(shown.columns[:5]) == ["MS", "LSC", "PT", "LFE", "variant"]
    assert list(shown["FID (ours, 200 samples)"]) == ["11.00 ± 1.00", "21.00 ± 1.41", "30.00", "40.00"]
    assert list(shown["paper FID (Tab. 4)"]) == ["2.92", "2.94", "17.60", "—"]
    md = tables.markdown(shown)
    assert "| ✓ | ✓ | ✓ | ✓ | full | 11.00 ± 1.00 | 3 |" in md and "| ✓ | ✓ |  | ✓ | −PT | 21.00 ± 1.41 | 2 |" in md
    tex = tables.latex(shown, "Tab. 4", "tab:x")
    assert r"\toprule" in tex and r"\checkmark & \checkmark" in tex and r"11.00 $\pm$ 1.00" in tex
    assert "paper FID (Tab. 4)" in tex and r"$-$PT" in tex


def test_scan_table_reuses_the_shared_networks(results):
    t = tables.scan_table(read_runs(results, "syn"))
    assert list(t["scan_patterns"]) == ["1234", "12", "1"]  # 1234 is the full model, 1 is -MS
    assert list(t["fid_mean"]) == [11.0, 16.0, 30.0]
    assert list(t["paper FID (Tab. 6)"]) == [2.92, 2.91, 17.60]
    shown = tables.display(t)
    assert list(shown["Scanning patterns"]) == ["①②③④ (1234)", "①② (12)", "① (1)"]
    assert list(shown["Δ FID vs 1234"]) == ["", "+5.00 (seeds apart)", "+19.00"]
    assert r"\textcircled{1}\textcircled{2}" in tables.latex(shown)


@pytest.mark.parametrize("values, reference, apart", [
    ([20.0, 22.0], [10.0, 12.0], True), ([1.0, 2.0], [10.0, 12.0], True),  # worse, or better, in every seed
    ([11.0, 30.0], [10.0, 12.0], False), ([12.0, 13.0], [10.0, 12.0], False),  # ranges meet (a tie counts)
    ([20.0], [10.0, 12.0], None), ([20.0, 21.0], [10.0], None),  # one seed shows no noise
])
def test_seeds_apart(values, reference, apart):
    assert tables.seeds_apart(values, reference) is apart
    assert tables.delta_cell(5.0, apart) == "+5.00" + {True: " (seeds apart)", False: " (seeds overlap)", None: ""}[apart]


def test_a_table_without_the_full_model_has_no_difference_column(results):
    df = read_runs(results, "syn")
    t = tables.ablation_table(df[df["variant_key"] != make_variant(()).key])
    assert t["fid_delta"].isna().all()
    assert not any(c.startswith("Δ FID") for c in tables.display(t).columns)


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
    assert list(csv["fid_mean"]) == [11.0, 21.0, 30.0, 40.0] and csv["fid_std"][0] == pytest.approx(1.0)
    assert csv["fid_values"][0] == "10;11;12" and csv["paper FID (Tab. 4)"][0] == 2.92
    text = path.read_text()
    assert "**200 samples**" in text and "250 steps" in text and "preset: smoke" in text and "ran on: cpu" in text
    assert "FID (ours, 200 samples)" in text and "paper FID (Tab. 4)" in text and "paper FID (Tab. 6)" in text
    assert "out of memory" in text  # the failed trial is listed
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


def test_speed_rows_add_the_fig3_section(results):
    for model, family, ms in (("dim_tiny_2", "dim", [2.0, 3.0]), ("uvit_tiny_2", "uvit", [1.0, 4.0])):
        for res, m in zip((32, 64), ms, strict=True):
            append_row("speed", {"sweep": "s1", "model": model, "alias": family, "family": family, "resolution": res,
                                 "batch": 1, "dtype": "bf16", "mode": "infer", "status": "ok", "ms": m,
                                 "log10_it_per_ms": math.log10(1 / m), "gpu": "FakeGPU", "floor_ms": None,
                                 "timestamp": "2026-01-01T00:00:00+00:00"}, results)
    md = build.speed_section(results, results / "out")
    assert md.startswith("## Speed (Fig. 3)") and "FakeGPU" in md and "fig3_speed.png" in md
    assert (results / "out" / "fig3_speed.png").stat().st_size > 0
    text = build.build_report(results, "syn", log=lambda s: None).read_text()
    assert "## Speed (Fig. 3)" in text


def test_other_sections_are_skipped_without_rows(tmp_path):
    assert build.speed_section(tmp_path, tmp_path / "out") is None
    assert build.resolution_section(tmp_path, tmp_path / "out") is None


def test_report_cli(results):
    app = typer.Typer()
    study_cli.register(app)
    res = CliRunner().invoke(app, ["report", "--study", "syn", "--results", str(results)])
    assert res.exit_code == 0, res.output
    assert "README.md" in res.stdout and "fid_tab4.png" in res.stdout
    res = CliRunner().invoke(app, ["report", "--results", str(results)])  # every study under the root
    assert res.exit_code == 0 and "syn" in res.stdout
