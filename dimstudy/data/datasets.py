"""Dataset registry: every entry yields `(image, label)` with image a float tensor (C, H, W) in [-1, 1].

`build_dataset(name, resolution, ...)` is the one entry point. Entries:

- `digits`  scikit-learn's bundled 8x8 handwritten digits (1797 real images, no network): the offline
            default, upscaled to the requested resolution and replicated to 3 channels so CIFAR-shaped
            models run unchanged.
- `photos`  crops of the seven colour photographs bundled in scikit-image's and scikit-learn's wheels (no
            network; public domain, CC0 and CC BY 2.0, see `dimstudy.data.photos`): 50,000 training crops at
            several scales and 10,000 reference crops (`train=False`) from a held-out quarter of each photo.
- `cifar10` CIFAR-10 in torchvision's standard `cifar-10-batches-py` layout, downloaded when online.
- `folder`  any folder of images (recursive), shorter side resized and centre-cropped.
- `latents` precomputed latents (see `dimstudy.data.latents`), returned as stored.

The label is an int in [0, num_classes) when `class_labels=True`, else -1 (and `num_classes` is 0), so
an unconditional run that uses a label by mistake fails loudly instead of training on class 0.
Random horizontal flips are the trainer's job, not done here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NO_LABEL = -1


class DatasetUnavailableError(RuntimeError):
    """The data is neither on disk nor downloadable; the message says where we looked and what to do."""


def cache_root() -> Path:
    """dimstudy's cache root: `$DIMSTUDY_CACHE`, else `~/.cache/dimstudy` (data/ and fid/ live under it)."""
    return Path(os.environ.get("DIMSTUDY_CACHE", "~/.cache/dimstudy")).expanduser()


def offline() -> bool:
    """`DIMSTUDY_OFFLINE=1`: never try a download (data or FID weights), go straight to local copies."""
    return bool(os.environ.get("DIMSTUDY_OFFLINE"))


def short_hash(text: str) -> str:
    """8 hex digits naming a path or setting inside cache keys."""
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------------------
# Pixel convention: uint8 [0, 255] <-> float [-1, 1]. The round trip is exact, so images saved as PNG and
# read back (the reference FID pipeline) are bit-identical to scoring the float tensors directly.


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_pngs(images: torch.Tensor, folder: str | Path, start: int = 0) -> list[Path]:
    """Write (N, C, H, W) images (float in [-1, 1] or uint8; C = 1 or 3) as `folder/{start+i:06d}.png`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if images.dtype != torch.uint8:
        images = float_to_uint8(images)
    paths = []
    for i, img in enumerate(images.cpu()):
        arr = img.permute(1, 2, 0).numpy()  # (H, W, C)
        path = folder / f"{start + i:06d}.png"
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
        paths.append(path)
    return paths


def resize_center_crop(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """(C, H, W) float in [-1, 1] -> (C, r, r): shorter side to r (bicubic, antialiased), centre crop.

    Bicubic overshoots, hence the clamp back into [-1, 1].
    """
    if x.shape[-2:] == (resolution, resolution):
        return x
    x = TF.resize(x, resolution, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [resolution, resolution]).clamp(-1, 1)


class ImageDataset(Dataset):
    """Base of every entry: the metadata the trainer and the FID code read.

    `split` says which part or copy of the data this is ("train"/"test", or a folder's name and path
    hash), so `tag` (e.g. "cifar10-train-32px") identifies the images, e.g. in FID cache keys.
    """

    def __init__(self, name: str, resolution: int, channels: int, num_classes: int, split: str):
        self.name, self.resolution, self.channels, self.num_classes = name, resolution, channels, num_classes
        self.split = split

    @property
    def tag(self) -> str:
        return f"{self.name}-{self.split}-{self.resolution}px"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.tag}, n={len(self)}, channels={self.channels}, "
                f"num_classes={self.num_classes})")


def _path_split(path: Path) -> str:
    """Split name of on-disk data: its name plus a hash of its absolute path."""
    return f"{path.name}.{short_hash(str(path.resolve()))}"


class Digits(ImageDataset):
    """sklearn's 1797 handwritten digits (8x8, values 0..16), upscaled per item (cheap, deterministic).

    The set has no train/test split; both splits are the whole set.
    """

    def __init__(self, resolution=None, data_dir=None, train=True, class_labels=False, channels=3):
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        if channels not in (1, 3):
            raise ValueError(f"digits: channels must be 1 or 3, got {channels}")
        digits = load_digits()
        self.images = torch.from_numpy(digits.images).float()[:, None] / 8 - 1  # (1797, 1, 8, 8) in [-1, 1]
        self.labels = torch.from_numpy(digits.target).long()  # (1797,) in 0..9
        super().__init__("digits", resolution or 32, channels, 10 if class_labels else 0, "all")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = resize_center_crop(self.images[i], self.resolution).expand(self.channels, -1, -1)
        return x, int(self.labels[i]) if self.num_classes else NO_LABEL


class Photos(ImageDataset):
    """Natural-image crops at several scales from the photographs inside the scikit-image and scikit-learn
    wheels (sources, licences and the cutting: `dimstudy.data.photos`).

    train=True: `num_train` crops (50,000) of the training regions; train=False: `num_reference` crops
    (10,000) of the held-out regions, for FID. Both are a pure function of `seed` and cached as uint8.
    `data_dir`: a folder with the seven source files, for machines without the wheels.
    """

    def __init__(self, resolution=None, data_dir=None, train=True, class_labels=False, seed=0,
                 num_train=None, num_reference=None, progress=True):
        from dimstudy.data import photos

        if class_labels:
            raise ValueError("photos has no classes; train it unconditionally (class_cond = false)")
        split = "train" if train else "reference"
        n = (num_train or photos.NUM_TRAIN) if train else (num_reference or photos.NUM_REFERENCE)
        resolution = resolution or 32
        self.data, key = photos.load_crops(split, resolution, n, seed, data_dir, progress)  # (N, 3, r, r) uint8
        super().__init__("photos", resolution, 3, 0, f"{split}.{key}")

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return uint8_to_float(torch.from_numpy(np.array(self.data[i]))), NO_LABEL


class Cifar10(ImageDataset):
    """CIFAR-10 from the standard python-version batches (`cifar-10-batches-py/data_batch_*`, `test_batch`).

    Download goes through torchvision (its URL and md5 check on the tarball). Reading is done here rather
    than by `torchvision.datasets.CIFAR10` because that class md5-checks every batch file on each load,
    which rejects any copy that is not byte-identical to the official one (and costs seconds per load).
    `data_dir` may be the folder holding `cifar-10-batches-py` or that folder itself.
    """

    def __init__(self, resolution=None, data_dir=None, train=True, class_labels=False, download=True):
        root = Path(data_dir).expanduser() if data_dir else cache_root() / "data"
        folder = root if root.name == CIFAR10.base_folder else root / CIFAR10.base_folder
        files = [folder / name for name, _md5 in (CIFAR10.train_list if train else CIFAR10.test_list)]
        if not all(f.exists() for f in files):
            self._download(folder, download)
        data, labels = [], []
        for f in files:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")  # the batches are Python 2 pickles
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"])
        self.data = torch.from_numpy(np.concatenate(data))  # (N, 3, 32, 32) uint8
        self.labels = torch.tensor(labels, dtype=torch.long)  # (N,) in 0..9
        super().__init__("cifar10", resolution or 32, 3, 10 if class_labels else 0, "train" if train else "test")

    @staticmethod
    def _download(folder: Path, download: bool) -> None:
        how = (f"download {CIFAR10.url} (the python version), extract it and pass the folder holding "
               f"{CIFAR10.base_folder}/ with --data-dir (data_dir=...)")
        if not download or offline():
            raise DatasetUnavailableError(
                f"CIFAR-10 not found in {folder} and downloads are off (download=False or DIMSTUDY_OFFLINE); {how}")
        try:
            download_and_extract_archive(CIFAR10.url, folder.parent, filename=CIFAR10.filename,
                                         md5=CIFAR10.tgz_md5, remove_finished=True)
        except (URLError, OSError, RuntimeError) as e:  # offline, HTTP error, or md5 mismatch
            reason = str(e).replace("\n", " ")
            raise DatasetUnavailableError(
                f"CIFAR-10 not found in {folder} and download failed ({reason}); {how}") from e

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x = resize_center_crop(uint8_to_float(self.data[i]), self.resolution)
        return x, int(self.labels[i]) if self.num_classes else NO_LABEL


def check_images(paths: list[Path], root: Path, skip: bool = False) -> list[Path]:
    """The readable ones of `paths`. Every file PIL cannot read (empty, truncated, not an image) is found before
    any is used, since one bad file in a large folder would otherwise stop a run midway: all of them are named
    in one ValueError, or with `skip` in one warning and left out. PIL's verify() reads a file without decoding it."""
    bad, good = [], []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.verify()
        except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError (bad PNG chunks), ...
            bad.append(f"{p.relative_to(root)} ({type(e).__name__})")
        else:
            good.append(p)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        what = f"{len(bad)} of {len(paths)} images under {root} cannot be read: {', '.join(bad[:5])}{more}"
        if not skip or not good:
            raise ValueError(f"{what}; remove or replace them" + ("" if skip else ", or skip them with --skip-unreadable"))
        warnings.warn(f"{what}; skipped (--skip-unreadable)", stacklevel=2)
    return good


class ImageFolder(ImageDataset):
    """Every image under `data_dir` (recursive, sorted paths), as RGB.

    With `class_labels=True` the label is the index of the image's first-level sub-folder among the
    sorted sub-folder names. `resolution=None` takes the first image's shorter side, which keeps a folder
    of same-sized square images (e.g. saved samples) exactly as stored.
    """

    def __init__(self, resolution=None, data_dir=None, train=True, class_labels=False, skip_unreadable=False):
        if data_dir is None:
            raise ValueError("the folder dataset needs data_dir (a folder of images)")
        self.root = Path(data_dir).expanduser()
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.paths:
            raise DatasetUnavailableError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.paths = check_images(self.paths, self.root, skip=skip_unreadable)
        self.classes: list[str] = []
        if class_labels:
            tops = [p.relative_to(self.root).parts for p in self.paths]
            if any(len(parts) == 1 for parts in tops):
                raise ValueError(f"class_labels=True needs every image inside a class sub-folder of {self.root}")
            self.classes = sorted({parts[0] for parts in tops})
        if resolution is None:
            with Image.open(self.paths[0]) as img:
                resolution = min(img.size)
        super().__init__("folder", resolution, 3, len(self.classes), _path_split(self.root))

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        with Image.open(path) as img:
            arr = np.array(img.convert("RGB"))  # (H, W, 3) uint8, writable
        x = resize_center_crop(uint8_to_float(torch.from_numpy(arr).permute(2, 0, 1)), self.resolution)
        label = self.classes.index(path.relative_to(self.root).parts[0]) if self.classes else NO_LABEL
        return x, label


class Latents(ImageDataset):
    """Precomputed latents (N, C, h, w), already scaled, with optional labels (N,).

    `data_dir` is a .pt file (a dict with "latents", optional "labels", "classes" and metadata as written
    by `encode_folder`, or a bare tensor), an .npz file (arrays "latents", optional "labels"), or a
    directory whose *.pt / *.npz shards are concatenated in sorted order. `resolution` may be None, the
    latent size h, or the image resolution recorded in the file; anything else is an error, because
    latents cannot be resized.
    """

    def __init__(self, resolution=None, data_dir=None, train=True, class_labels=False):
        if data_dir is None:
            raise ValueError("the latents dataset needs data_dir (a .pt/.npz file or a directory of them)")
        path = Path(data_dir).expanduser()
        files = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".npz")) if path.is_dir() else [path]
        if not files:
            raise DatasetUnavailableError(f"no .pt or .npz latents found in {path}")
        shards = [load_latents_file(f) for f in files]
        self.latents = torch.cat([s["latents"] for s in shards]).float()  # (N, C, h, w)
        self.meta = {k: v for k, v in shards[0].items() if k not in ("latents", "labels")}
        h = self.latents.shape[-1]
        if resolution not in (None, h, self.meta.get("image_resolution")):
            raise ValueError(f"latents in {path} are {h}x{h} (images {self.meta.get('image_resolution', '?')}px); "
                             f"they cannot be resized to {resolution}")
        self.labels = None
        num_classes = 0
        if class_labels:
            if any(s.get("labels") is None for s in shards):
                raise ValueError(f"class_labels=True but {path} stores no labels")
            self.labels = torch.cat([torch.as_tensor(s["labels"]) for s in shards]).long()  # (N,)
            num_classes = len(self.meta["classes"]) if "classes" in self.meta else int(self.labels.max()) + 1
        super().__init__("latents", h, self.latents.shape[1], num_classes, _path_split(path))

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, i):
        return self.latents[i], int(self.labels[i]) if self.labels is not None else NO_LABEL


def load_latents_file(path: Path) -> dict:
    """One latents file as a dict with at least "latents" (tensor) and "labels" (tensor or None)."""
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {"latents": torch.from_numpy(z["latents"]),
                    "labels": torch.from_numpy(z["labels"]) if "labels" in z else None}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {"latents": obj, "labels": None} if torch.is_tensor(obj) else {"labels": None, **obj}


DATASETS: dict[str, type[ImageDataset]] = {
    "digits": Digits,
    "photos": Photos,
    "cifar10": Cifar10,
    "folder": ImageFolder,
    "latents": Latents,
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_dataset(name: str, resolution: int | None = None, data_dir: str | Path | None = None,
                  train: bool = True, class_labels: bool = False, **kw) -> ImageDataset:
    """Build a registered dataset; extra keywords go to its constructor (digits: channels; cifar10: download;
    photos: seed, num_train, num_reference).

    `resolution=None` means the dataset's own: 32 for digits, photos and cifar10, as stored for folder/latents.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(list_datasets())}")
    return DATASETS[name](resolution=resolution, data_dir=data_dir, train=train, class_labels=class_labels, **kw)
