"""`photos`: an offline natural-image dataset cut from the photographs that ship inside two registry wheels.

The sources are colour photographs that are files *in* the wheels (checked against scikit-image 0.26.0 and
scikit-learn 1.9.1), not ones that scikit-image fetches on first use:

| file | package | what | licence |
| --- | --- | --- | --- |
| astronaut.png (512x512) | scikit-image | Eileen Collins, NASA Great Images | public domain |
| chelsea.png (451x300) | scikit-image | Chelsea the cat, by Stefan van der Walt | CC0 |
| coffee.png (600x400) | scikit-image | a coffee cup, by Rachel Michetti (Pikolo Espresso Bar) | CC0 |
| rocket.jpg (640x427) | scikit-image | DSCOVR launch on Falcon 9, by SpaceX | public domain |
| hubble_deep_field.jpg (1000x872) | scikit-image | Hubble eXtreme Deep Field, NASA | public domain |
| china.jpg (640x427) | scikit-learn | a temple in China, by danielbuechele (Flickr) | CC BY 2.0 |
| flower.jpg (640x427) | scikit-learn | a flower, by vultilion (Flickr) | CC BY 2.0 |

Left out: scikit-image's grey-level photos (camera, coins, moon, textures), its microscopy and medical images,
the Middlebury motorcycle pair (no licence stated in the package), and everything fetched through pooch.

How the images are cut (a pure function of the seed, so every machine builds the same bytes):
- Each photo is split along its longer side: the last quarter is the **reference** region, the rest the
  **train** region, so no pixel of a reference crop appears in any training crop (train and reference are
  disjoint as images *and* as pixels).
- A crop picks a photo (uniformly), a side of 1/8, 3/16 or 1/4 of the photo's shorter side (three scales:
  37 to 218 px), and a position inside that photo's region; it is resized to the requested resolution
  (PIL bicubic, antialiased). The random words come from `numpy.random.SeedSequence`, whose output is fixed
  by its algorithm across numpy versions.
- 50,000 training and 10,000 reference crops by default, cached as uint8 (N, 3, r, r) under
  `$DIMSTUDY_CACHE/data/` (built once, under a file lock, in a few seconds).

Without scikit-image (or scikit-learn), point `data_dir` at a folder holding the seven files:
`dimstudy photos --export DIR` writes them (2.4 MB) with their licences. Each file's sha256 is part of the
cache key, and a file that differs from the one this dataset was defined with is reported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the cutting changes: it is part of the cache key and the split name
SCALES = (1 / 8, 3 / 16, 1 / 4)  # crop side as a fraction of the photo's shorter side
REFERENCE_FRACTION = 1 / 4  # of the longer side, at its end
NUM_TRAIN, NUM_REFERENCE = 50_000, 10_000
SPLITS = {"train": 0, "reference": 1}  # split -> the stream id mixed into the seed


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # import name of the wheel that ships it
    path: str  # inside the package
    what: str
    licence: str
    sha256: str  # of the file as shipped in scikit-image 0.26.0 / scikit-learn 1.9.1


PHOTOS = (
    Photo("astronaut.png", "skimage", "data/astronaut.png", "Eileen Collins, NASA Great Images", "public domain",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    Photo("chelsea.png", "skimage", "data/chelsea.png", "Chelsea the cat, by Stefan van der Walt", "CC0",
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    Photo("coffee.png", "skimage", "data/coffee.png", "coffee cup, by Rachel Michetti", "CC0",
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    Photo("rocket.jpg", "skimage", "data/rocket.jpg", "DSCOVR launch on Falcon 9, SpaceX", "public domain",
          "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    Photo("hubble_deep_field.jpg", "skimage", "data/hubble_deep_field.jpg", "Hubble eXtreme Deep Field, NASA",
          "public domain", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    Photo("china.jpg", "sklearn", "datasets/images/china.jpg", "temple in China, by danielbuechele (Flickr)",
          "CC BY 2.0", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    Photo("flower.jpg", "sklearn", "datasets/images/flower.jpg", "flower, by vultilion (Flickr)", "CC BY 2.0",
          "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
)
PIP_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn"}


# -- where the photos are ------------------------------------------------------------------------------------
def _package_dir(package: str) -> Path | None:
    """The installed package's folder, found without importing it (scikit-image takes seconds to import)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def locate(data_dir: str | Path | None = None) -> list[Path]:
    """The seven source files: from `data_dir` when given, else from the installed wheels.

    Raises DatasetUnavailableError naming what is missing and how to get it.
    """
    from dimstudy.data.datasets import DatasetUnavailableError

    paths, missing = [], []
    for p in PHOTOS:
        if data_dir is not None:
            path = Path(data_dir).expanduser() / p.name
        else:
            root = _package_dir(p.package)
            path = root / p.path if root else None
        if path is None or not path.is_file():
            missing.append(f"{p.name} ({PIP_NAMES[p.package]})")
        paths.append(path)
    if missing:
        where = f"in {data_dir}" if data_dir is not None else "in the installed packages"
        raise DatasetUnavailableError(
            f"photos: {', '.join(missing)} not found {where}; pip install scikit-image scikit-learn, or pass "
            "--data-dir with a folder that `dimstudy photos --export DIR` wrote on a machine that has them")
    return paths


def file_hashes(paths: list[Path]) -> list[str]:
    """sha256 of each file; warns once for a file that differs from the one the dataset was defined with."""
    out = []
    for p, path in zip(PHOTOS, paths, strict=True):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != p.sha256:
            warnings.warn(f"photos: {path} differs from the {p.name} this dataset was defined with "
                          f"({PIP_NAMES[p.package]} as of 2026-12); its crops, and FIDs against them, are "
                          "not comparable with other machines'", stacklevel=3)
        out.append(digest)
    return out


def export(out_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Copy the seven photos and a LICENSES.md into out_dir (for a machine without the wheels)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in locate(data_dir):
        shutil.copyfile(path, out / path.name)
    lines = ["# Source photographs of the dimstudy `photos` dataset", "",
             "| file | from | what | licence |", "| --- | --- | --- | --- |"]
    lines += [f"| {p.name} | {PIP_NAMES[p.package]} | {p.what} | {p.licence} |" for p in PHOTOS]
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# -- cutting -----------------------------------------------------------------------------------------------------
def regions(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """split -> (x0, y0, x1, y1): the reference region is the last quarter of the longer side, wide enough for
    the largest crop; the train region is the rest."""
    long_side = max(width, height)
    band = max(math.ceil(long_side * REFERENCE_FRACTION), crop_sides(width, height)[-1])
    cut = long_side - band
    if width >= height:
        return {"train": (0, 0, cut, height), "reference": (cut, 0, width, height)}
    return {"train": (0, 0, width, cut), "reference": (0, cut, width, height)}


def crop_sides(width: int, height: int) -> list[int]:
    return [max(1, round(s * min(width, height))) for s in SCALES]


def crop_boxes(sizes: list[tuple[int, int]], split: str, n: int, seed: int = 0) -> np.ndarray:
    """(n, 5) int64: photo index, x0, y0, x1, y1 of each crop of `split`, from (seed, split) alone.

    sizes: (width, height) of each photo, in PHOTOS order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown photos split {split!r}; valid choices: {', '.join(SPLITS)}")
    words = np.random.SeedSequence([seed, SPLITS[split], VERSION]).generate_state(3 * n, dtype=np.uint64)
    words = words.reshape(n, 3) if n else np.zeros((0, 3), np.uint64)
    photo = (words[:, 0] % np.uint64(len(sizes))).astype(np.int64)
    scale = (words[:, 1] % np.uint64(len(SCALES))).astype(np.int64)
    boxes = np.zeros((n, 5), dtype=np.int64)
    for i, (k, j, w) in enumerate(zip(photo, scale, words[:, 2], strict=True)):
        x0, y0, x1, y1 = regions(*sizes[k])[split]
        side = crop_sides(*sizes[k])[j]
        x = x0 + int(w & np.uint64(0xFFFFFFFF)) % (x1 - x0 - side + 1)  # low and high 32 bits: x and y
        y = y0 + int(w >> np.uint64(32)) % (y1 - y0 - side + 1)
        boxes[i] = (k, x, y, x + side, y + side)
    return boxes


def cut(images: list, boxes: np.ndarray, resolution: int, progress: bool = False) -> np.ndarray:
    """(n, 3, r, r) uint8: each box of its PIL image, resized to r x r (bicubic; PIL antialiases downscaling)."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = np.empty((len(boxes), 3, resolution, resolution), dtype=np.uint8)
    for i, (k, x0, y0, x1, y1) in enumerate(tqdm(boxes, desc="photos: cutting crops", disable=not progress,
                                                 leave=False, mininterval=1.0)):
        crop = images[k].resize((resolution, resolution), Image.Resampling.BICUBIC, box=(x0, y0, x1, y1))
        out[i] = np.asarray(crop).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return out


def load_crops(split: str, resolution: int, n: int, seed: int = 0, data_dir: str | Path | None = None,
               progress: bool = True) -> tuple[np.ndarray, str]:
    """(crops (n, 3, r, r) uint8, key): built once per (sources, split, r, n, seed) and cached as .npy.

    The key (12 hex digits) names the cache file and enters the dataset's split name, so FID statistics
    cached for one version of the data are never reused for another.
    """
    from filelock import FileLock
    from PIL import Image

    from dimstudy.data.datasets import cache_root

    paths = locate(data_dir)
    spec = {"version": VERSION, "sources": file_hashes(paths), "split": split, "resolution": resolution, "n": n,
            "seed": seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "data" / f"photos-{split}-{resolution}px-n{n}-seed{seed}-{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # many study workers start at once: one cuts, the others wait and read
        if not path.exists():
            images = []
            for p in paths:
                with Image.open(p) as img:
                    images.append(img.convert("RGB"))
            boxes = crop_boxes([im.size for im in images], split, n, seed)
            crops = cut(images, boxes, resolution, progress)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, crops)
            tmp.replace(path)  # atomic: a killed build leaves no half-written cache
    return np.load(path, mmap_mode="r"), key


__all__ = ["NUM_REFERENCE", "NUM_TRAIN", "PHOTOS", "SCALES", "crop_boxes", "export", "load_crops", "locate", "regions"]
