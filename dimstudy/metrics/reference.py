"""ADM-format `.npz` files: image batches (`arr_0`) and precomputed reference statistics.

ADM's evaluator (guided-diffusion `evaluations/evaluator.py`) and the papers that use it (ADM, DiT, U-ViT, DiM)
score a sample batch against a reference batch; both are `.npz` files:

- `arr_0`: the images, uint8 (N, H, W, 3). `dimstudy sample --npz` writes a sample batch so.
- `mu`, `sigma`: mean (2048,) and covariance (2048, 2048) of Inception pool3 features (FID);
  `mu_s`, `sigma_s`: the same of the 2023-d spatial features (sFID). ADM's reference batches (e.g.
  `VIRTUAL_imagenet256_labeled.npz`) carry both the images and these statistics.

`dimstudy fid-stats` writes the statistics of a user's own data in the same keys, plus what made them:
`preprocess`, `feature_extractor`, `num_images`, `source` (0-d string/int arrays, read without pickle). A file
without `preprocess` (ADM's) was made by ADM's evaluator, whose TF graph resizes to 299 itself with TF1's
bilinear resize and scales by (x - 128) / 128: `--preprocess torch-fidelity` is the matching choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

STATS_KEYS = {"fid": ("mu", "sigma"), "sfid": ("mu_s", "sigma_s")}  # metric -> the npz keys of its statistics
META_KEYS = ("preprocess", "feature_extractor", "num_images", "source")
ADM_PREPROCESS = "torch-fidelity"  # what a file without `preprocess` (ADM's evaluator) was made with


class NpzImages(Dataset):
    """An ADM batch's `arr_0` (N, H, W, 3) uint8 as (3, H, W) uint8 tensors.

    The array is read into memory once (a 10K-image 256 px reference batch is 2 GB); grayscale (N, H, W) or
    (N, H, W, 1) batches are widened to RGB.
    """

    def __init__(self, path: str | Path, arr: np.ndarray | None = None):
        self.path = Path(path)
        if arr is None:
            with np.load(self.path) as f:
                if "arr_0" not in f:
                    raise ValueError(f"{self.path} has no images (arr_0); its keys: {', '.join(f.files)}")
                arr = f["arr_0"]
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"{self.path}: arr_0 must be uint8 (N, H, W, 3) images, got {arr.dtype} {arr.shape}")
        self.arr = arr

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, i):
        return torch.from_numpy(np.ascontiguousarray(self.arr[i])).permute(2, 0, 1).expand(3, -1, -1)  # (3, H, W)

    @property
    def tag(self) -> str:
        return f"npz({self.path.name})"


@dataclass
class ReferenceNpz:
    """What a reference `.npz` holds: statistics per metric ("fid", "sfid"), images, and how they were made."""

    path: Path
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    images: NpzImages | None = None
    meta: dict = field(default_factory=dict)

    @property
    def preprocess(self) -> str:
        """The preprocessing its statistics need: the recorded one, ADM's for a file without one."""
        return self.meta.get("preprocess", ADM_PREPROCESS)

    def describe(self) -> str:
        n = self.meta.get("num_images") or (len(self.images) if self.images is not None else None)
        return f"npz({self.path.name}" + (f", n={n}" if n else "") + ")"


def read_reference_npz(path: str | Path) -> ReferenceNpz:
    """Read statistics (`mu`/`sigma`, `mu_s`/`sigma_s`), images (`arr_0`) and metadata of an ADM-style `.npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference npz {path} does not exist")
    out = ReferenceNpz(path)
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        for metric, (mu, sigma) in STATS_KEYS.items():
            if {mu, sigma} <= keys:
                m, s = f[mu].astype(np.float64), f[sigma].astype(np.float64)
                if m.ndim != 1 or s.shape != (len(m), len(m)):
                    raise ValueError(f"{path}: {mu} {m.shape} and {sigma} {s.shape} are not a mean and its covariance")
                out.stats[metric] = (m, s)
            elif mu in keys or sigma in keys:
                raise ValueError(f"{path} has only one of {mu}, {sigma}")
        out.meta = {k: f[k].item() for k in META_KEYS if k in keys}
        if "arr_0" in keys:
            out.images = NpzImages(path, f["arr_0"])
    if not out.stats and out.images is None:
        raise ValueError(f"{path} holds neither statistics (mu, sigma, mu_s, sigma_s) nor images (arr_0); "
                         f"its keys: {', '.join(sorted(keys))}")
    return out


def write_stats_npz(path: str | Path, stats: dict[str, tuple[np.ndarray, np.ndarray]], **meta) -> Path:
    """Write `stats` ({"fid": (mu, sigma), "sfid": (mu_s, sigma_s)}) in ADM's keys plus `meta` (META_KEYS)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {path}")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ValueError(f"unknown metadata {unknown}; valid keys: {', '.join(META_KEYS)}")
    arrays = {key: np.asarray(a, np.float64) for metric, pair in stats.items() for key, a in zip(STATS_KEYS[metric], pair)}
    arrays |= {k: np.asarray(v) for k, v in meta.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # whole or absent
    return path


__all__ = ["ADM_PREPROCESS", "META_KEYS", "NpzImages", "ReferenceNpz", "STATS_KEYS", "read_reference_npz",
           "write_stats_npz"]
