"""Dataset registry and latents pipeline: offline, CPU, small generated data."""

import pickle
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

import dimstudy.data.datasets as datasets_mod
from dimstudy.data import (
    DatasetUnavailableError,
    build_dataset,
    decode_latents,
    encode_folder,
    float_to_uint8,
    list_datasets,
    photos,
    save_pngs,
    uint8_to_float,
)


def test_registry_lists_entries_and_rejects_unknown_names():
    assert list_datasets() == ["cifar10", "digits", "folder", "latents", "photos"]
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; valid choices: cifar10, digits, folder, latents, photos"):
        build_dataset("mnist", 32)


def test_uint8_float_round_trip_is_exact():
    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(float_to_uint8(uint8_to_float(x)), x)
    assert uint8_to_float(x).min() == -1 and uint8_to_float(x).max() == 1


def test_digits_are_the_real_sklearn_images():
    ds = build_dataset("digits", 32, class_labels=True)
    assert (len(ds), ds.channels, ds.resolution, ds.num_classes, ds.name) == (1797, 3, 32, 10, "digits")
    images = torch.stack([ds[i][0] for i in range(len(ds))])  # (1797, 3, 32, 32)
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    assert images.shape == (1797, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images[:, 0], images[:, 2])  # grey replicated to RGB
    assert sorted(labels.unique().tolist()) == list(range(10))
    # Averaging 4x4 blocks undoes the upscaling closely: the images are sklearn's, in sklearn's order.
    sk = load_digits()
    down = F.avg_pool2d(images[:, :1], 4)[:, 0].flatten(1)  # (1797, 64)
    orig = torch.from_numpy(sk.images).float().flatten(1) / 8 - 1
    corr = torch.corrcoef(torch.stack([down.flatten(), orig.flatten()]))[0, 1]
    assert corr > 0.97
    assert torch.equal(labels, torch.from_numpy(sk.target).long())
    # Deterministic, other options honoured, no labels unless asked.
    assert torch.equal(build_dataset("digits", 32)[7][0], images[7])
    x, y = build_dataset("digits", 16, channels=1)[0]
    assert x.shape == (1, 16, 16) and y == -1


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_dataset_labels_from_sub_folders(tmp_path):
    rng = np.random.default_rng(0)
    for name in ["dog/a.png", "dog/deep/b.jpg", "cat/c.png", "cat/d.webp", "bird/e.bmp"]:
        _write_png(tmp_path / name, rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = build_dataset("folder", 16, data_dir=tmp_path, class_labels=True)
    assert (len(ds), ds.num_classes, ds.classes) == (5, 3, ["bird", "cat", "dog"])
    items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 for x, _ in items)
    labels = {p.relative_to(tmp_path).as_posix(): y for p, (_, y) in zip(ds.paths, items, strict=True)}
    assert labels == {"bird/e.bmp": 0, "cat/c.png": 1, "cat/d.webp": 1, "dog/a.png": 2, "dog/deep/b.jpg": 2}
    assert build_dataset("folder", 16, data_dir=tmp_path).num_classes == 0
    _write_png(tmp_path / "loose.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="class sub-folder"):
        build_dataset("folder", 16, data_dir=tmp_path, class_labels=True)


def test_unreadable_images_are_listed_in_one_error_before_any_is_used(tmp_path):
    rng = np.random.default_rng(0)
    for name in ["a.png", "b.png", "c.jpg"]:
        _write_png(tmp_path / name, rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    good = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(good[: len(good) // 2])  # cut off
    (tmp_path / "d.png").write_text("not an image")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ValueError) as e:
        build_dataset("folder", 16, data_dir=tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"3 of 5 images under {tmp_path} cannot be read: b.png (") and "d.png (" in msg
    assert "e.png (" in msg and "a.png" not in msg and "c.jpg" not in msg and "\n" not in msg
    assert msg.endswith("remove or replace them, or skip them with --skip-unreadable")
    with pytest.warns(UserWarning, match=r"3 of 5 images under .* cannot be read: .*; skipped \(--skip-unreadable\)"):
        ds = build_dataset("folder", 16, data_dir=tmp_path, skip_unreadable=True)
    assert [p.name for p in ds.paths] == ["a.png", "c.jpg"] and len(ds) == 2 and ds[1][0].shape == (3, 16, 16)
    for name in ["a.png", "c.jpg"]:
        (tmp_path / name).write_text("broken too")
    with pytest.raises(ValueError, match="5 of 5 images .* remove or replace them$"):  # nothing left to skip to
        build_dataset("folder", 16, data_dir=tmp_path, skip_unreadable=True)


def test_folder_resizes_shorter_side_then_centre_crops(tmp_path):
    # 16 high, 48 wide: black | white | black thirds. The shorter side is already 16, so the centre
    # crop must keep exactly the white middle third.
    img = np.zeros((16, 48, 3), dtype=np.uint8)
    img[:, 16:32] = 255
    _write_png(tmp_path / "wide.png", img)
    x, _ = build_dataset("folder", 16, data_dir=tmp_path)[0]
    assert x.shape == (3, 16, 16) and torch.all(x == 1)
    # Downscaled to 8: 8 x 24 after the resize, then the middle 8 columns.
    x, _ = build_dataset("folder", 8, data_dir=tmp_path)[0]
    assert x.shape == (3, 8, 8) and x[:, :, 2:6].min() > 0.9


def test_folder_of_saved_pngs_reads_back_exactly(tmp_path):
    images = torch.rand(3, 3, 12, 12) * 2 - 1
    save_pngs(images, tmp_path)
    ds = build_dataset("folder", None, data_dir=tmp_path)
    assert ds.resolution == 12
    back = torch.stack([ds[i][0] for i in range(3)])
    assert torch.equal(float_to_uint8(back), float_to_uint8(images))


def test_cifar10_offline_without_a_copy_says_how_to_get_it(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.delenv("DIMSTUDY_OFFLINE", raising=False)
    monkeypatch.setattr(datasets_mod, "download_and_extract_archive", no_network)
    with pytest.raises(DatasetUnavailableError) as err:
        build_dataset("cifar10", 32, data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "no network" in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and "--data-dir" in msg
    # DIMSTUDY_OFFLINE=1 does not even try.
    monkeypatch.setenv("DIMSTUDY_OFFLINE", "1")
    monkeypatch.setattr(datasets_mod, "download_and_extract_archive", pytest.fail)
    with pytest.raises(DatasetUnavailableError, match="DIMSTUDY_OFFLINE"):
        build_dataset("cifar10", 32, data_dir=tmp_path)


def _write_fake_cifar(root, per_batch=4):
    """The standard python-version layout: pickled dicts with "data" (N, 3072) uint8 and "labels"."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [(i + j) % 10 for j in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    return batches


def test_cifar10_reads_a_local_copy_from_data_dir(tmp_path, monkeypatch):
    batches = _write_fake_cifar(tmp_path)
    monkeypatch.setattr(datasets_mod, "download_and_extract_archive", pytest.fail)  # must not download
    train = build_dataset("cifar10", 32, data_dir=tmp_path, class_labels=True)
    assert (len(train), train.num_classes, train.channels, train.tag) == (20, 10, 3, "cifar10-train-32px")
    x, y = train[5]  # 2nd image of data_batch_2
    expected = torch.from_numpy(batches["data_batch_2"]["data"][1]).reshape(3, 32, 32)
    assert torch.equal(float_to_uint8(x), expected) and y == batches["data_batch_2"]["labels"][1]
    test = build_dataset("cifar10", 16, data_dir=tmp_path / "cifar-10-batches-py", train=False)
    x, y = test[0]
    assert len(test) == 4 and x.shape == (3, 16, 16) and y == -1


def test_latents_files_round_trip(tmp_path):
    z = torch.randn(6, 4, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"latents": z, "labels": labels, "image_resolution": 64}, tmp_path / "a.pt")
    ds = build_dataset("latents", 64, data_dir=tmp_path / "a.pt", class_labels=True)
    assert (len(ds), ds.channels, ds.resolution, ds.num_classes) == (6, 4, 8, 3)
    assert torch.equal(ds[4][0], z[4]) and ds[4][1] == 1
    with pytest.raises(ValueError, match="cannot be resized"):
        build_dataset("latents", 32, data_dir=tmp_path / "a.pt")
    # A directory of shards (.pt bare tensor + .npz) is concatenated in sorted order.
    shards = tmp_path / "shards"
    shards.mkdir()
    torch.save(z[:2], shards / "0.pt")
    np.savez(shards / "1.npz", latents=z[2:].numpy())
    ds = build_dataset("latents", None, data_dir=shards)
    assert torch.equal(torch.stack([ds[i][0] for i in range(len(ds))]), z) and ds[0][1] == -1
    with pytest.raises(ValueError, match="stores no labels"):
        build_dataset("latents", None, data_dir=shards, class_labels=True)


def test_encode_folder_and_decode_with_a_tiny_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32,
    )  # downsamples by 2
    rng = np.random.default_rng(0)
    for name in ["a/0.png", "a/1.png", "b/2.png"]:
        _write_png(tmp_path / "src" / name, rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    out = encode_folder(tmp_path / "src", tmp_path / "lat.pt", vae=vae, resolution=32, batch_size=2,
                        device="cpu", class_labels=True)
    ds = build_dataset("latents", 32, data_dir=out, class_labels=True)
    assert (len(ds), ds.channels, ds.resolution, ds.num_classes) == (3, 4, 16, 2)
    assert [ds[i][1] for i in range(3)] == [0, 0, 1]
    z = torch.stack([ds[i][0] for i in range(3)])  # (3, 4, 16, 16)
    images = decode_latents(z, vae)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    # Stored latents are the posterior mean times 0.18215.
    x = build_dataset("folder", 32, data_dir=tmp_path / "src")[0][0]
    with torch.no_grad():
        expected = vae.encode(x[None]).latent_dist.mean[0] * 0.18215
    torch.testing.assert_close(z[0], expected)


# -- photos ---------------------------------------------------------------------------------------------------
def small_photos(tmp_path, monkeypatch, cache="cache", **kw):
    """A few dozen crops in a cache of this test's own."""
    monkeypatch.setenv("DIMSTUDY_CACHE", str(tmp_path / cache))
    return build_dataset("photos", kw.pop("resolution", 16), num_train=48, num_reference=24, progress=False, **kw)


def test_photos_are_deterministic_same_seed_same_bytes(tmp_path, monkeypatch):
    a = small_photos(tmp_path, monkeypatch, "a")
    b = small_photos(tmp_path, monkeypatch, "b")  # built again from scratch, in another cache
    assert a.tag == b.tag and np.array_equal(a.data, b.data)
    assert (len(a), a.channels, a.resolution, a.num_classes, a.data.dtype) == (48, 3, 16, 0, np.uint8)
    other = small_photos(tmp_path, monkeypatch, "c", seed=1)
    assert other.tag != a.tag and not np.array_equal(other.data, a.data)
    x, label = a[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label == -1
    assert torch.equal(float_to_uint8(x), torch.from_numpy(np.array(a.data[0])))
    assert len({a.data[i].tobytes() for i in range(len(a))}) > 40  # crops, not copies of a few images


def test_photos_train_and_reference_are_disjoint(tmp_path, monkeypatch):
    sizes = [(512, 512), (451, 300), (300, 451), (1000, 872)]
    train = photos.crop_boxes(sizes, "train", 2000)
    ref = photos.crop_boxes(sizes, "reference", 500)
    for boxes, split in ((train, "train"), (ref, "reference")):
        for k, (w, h) in enumerate(sizes):
            x0, y0, x1, y1 = photos.regions(w, h)[split]
            mine = boxes[boxes[:, 0] == k]
            assert len(mine) > 0 and (mine[:, 1] >= x0).all() and (mine[:, 2] >= y0).all()
            assert (mine[:, 3] <= x1).all() and (mine[:, 4] <= y1).all()
            assert set(mine[:, 3] - mine[:, 1]) == set(photos.crop_sides(w, h))  # every scale occurs
    for w, h in sizes:  # the two regions of a photo do not meet
        (a0, b0, a1, b1), (c0, d0, c1, d1) = photos.regions(w, h).values()
        assert a1 <= c0 or b1 <= d0
    tr = small_photos(tmp_path, monkeypatch)
    rf = build_dataset("photos", 16, train=False, num_train=48, num_reference=24, progress=False)
    assert (len(rf), rf.split.split(".")[0]) == (24, "reference") and tr.tag != rf.tag
    assert not {tr.data[i].tobytes() for i in range(len(tr))} & {rf.data[i].tobytes() for i in range(len(rf))}


def test_photos_work_offline_from_the_wheels_or_an_exported_folder(tmp_path, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise OSError("network use in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("DIMSTUDY_OFFLINE", "1")
    wheels = small_photos(tmp_path, monkeypatch, "w")
    folder = photos.export(tmp_path / "exported")
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in photos.PHOTOS] + ["LICENSES.md"])
    assert "CC BY 2.0" in (folder / "LICENSES.md").read_text()
    copied = small_photos(tmp_path, monkeypatch, "f", data_dir=folder)
    assert copied.tag == wheels.tag and np.array_equal(copied.data, wheels.data)  # the same files, the same crops
    (folder / "chelsea.png").unlink()
    with pytest.raises(DatasetUnavailableError, match=r"photos: chelsea.png \(scikit-image\) not found in .*--data-dir"):
        small_photos(tmp_path, monkeypatch, "g", data_dir=folder)
    with pytest.raises(ValueError, match="photos has no classes"):
        build_dataset("photos", 16, class_labels=True)
