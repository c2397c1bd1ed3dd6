"""Dense outputs: digit inpainting, one prediction per pixel (Perceiver IO sec. 3.2's
"outputs of any shape": one decoder query per pixel).

Data: scikit-learn's ``load_digits`` (the UCI optdigits set: 1797 handwritten digits, 8x8
pixels, intensities 0-16), which ships inside scikit-learn, so the task runs offline.

Each image hides a random ``hole`` x ``hole`` square. Input tokens are the 64 pixels in
row-major order, each ``[intensity in 0..1 (0 inside the hole), visible (1) or hidden (0)]``;
the model predicts the intensity level of every pixel (``levels`` classes; 17 = the exact
values 0-16). The loss covers every pixel (the whole image is the output); **accuracy counts
the hidden pixels only**, since copying the visible ones is trivial; the sequence accuracy is
the share of images with every hidden pixel right. Training holes are fresh each step; the
validation and test holes are fixed. For scale: always predicting the most common level scores
0.34 on the validation holes (17 levels, 4x4 holes).

Labels: ``y`` is (B, 64, 2): ``y[..., 0]`` the level of each pixel, ``y[..., 1]`` 1 inside the
hole, so that the loss and the metric can tell the two apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unicomp.tasks.base import Batch, Scored, TaskSpec, TensorTask, batch_generator

_DATA_SEED = 20210730  # fixed splits and validation/test holes for every run


def _digits() -> tuple[torch.Tensor, str]:
    """(1797, 8, 8) float intensities 0-16, and a description of the source."""
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        from unicomp.errors import DataError

        raise DataError(
            "digits-inpaint reads scikit-learn's bundled digits; pip install scikit-learn"
        ) from None
    images = torch.from_numpy(load_digits().images).float()
    return images, f"scikit-learn {sklearn.__version__} load_digits (UCI optdigits, 8x8)"


class DigitsInpaint(TensorTask):
    """Fill in a hidden square of an 8x8 digit: 64 pixel tokens in, 64 pixel classes out."""

    name = "digits-inpaint"
    default_train = {"steps": 2000, "lr": 1e-3, "batch_size": 64, "eval_every": 200}

    def __init__(self, hole: int = 4, levels: int = 17, n_val: int = 180, n_test: int = 360):
        if not 1 <= hole <= 8:
            raise ValueError(f"hole={hole} must be between 1 and 8 pixels")
        if not 2 <= levels <= 17:
            raise ValueError(f"levels={levels} must be between 2 and 17")
        images, source = _digits()
        n = images.shape[0]
        if n_val + n_test >= n:
            raise ValueError(f"n_val + n_test must be < {n}")
        self.hole, self.levels = hole, levels
        self.input_grid = self.output_grid = (8, 8)  # for Fourier position features
        self.spec = TaskSpec(max_len=64, d_in=2, d_out=levels, n_classes=levels, n_out_tokens=64)
        # Intensity 0-16 -> level 0..levels-1 (exact when levels = 17).
        level = torch.round(images.reshape(n, 64) * (levels - 1) / 16).long()  # (n, 64)
        perm = torch.randperm(n, generator=batch_generator(_DATA_SEED, -1))
        test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
        self.data = {
            # Training images stay whole; each step cuts fresh holes (train_batch).
            "train": Batch(level[train], level[train]),
            "val": self._cut(level[val], batch_generator(_DATA_SEED, -2)),
            "test": self._cut(level[test], batch_generator(_DATA_SEED, -3)),
        }
        self.data_source = (
            f"{source}: {len(train)} train / {n_val} val / {n_test} test images, "
            f"{hole}x{hole} hole, {levels} levels; val/test holes seeded {_DATA_SEED}"
        )

    def _cut(self, level: torch.Tensor, gen: torch.Generator) -> Batch:
        """level (n, 64) -> a Batch with one random hole per image."""
        n, h = level.shape[0], self.hole
        top, left = torch.randint(0, 9 - h, (2, n), generator=gen)  # (n,) each
        rows = torch.arange(8)[None, :, None]  # (1, 8, 1)
        cols = torch.arange(8)[None, None, :]  # (1, 1, 8)
        t, lft = top[:, None, None], left[:, None, None]  # (n, 1, 1)
        hidden = (rows >= t) & (rows < t + h) & (cols >= lft) & (cols < lft + h)  # (n, 8, 8)
        hidden = hidden.reshape(n, 64)  # (n, 64)
        intensity = level.float() / (self.levels - 1) * ~hidden  # (n, 64), 0 in the hole
        x = torch.stack([intensity, (~hidden).float()], dim=-1)  # (n, 64, 2)
        return Batch(x, level, target_mask=hidden)  # y: (n, 64) levels; scored: the hole

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        whole = super().train_batch(step, batch_size, seed)  # seeded epoch permutation
        return self._cut(whole.y, batch_generator(seed, step))

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy over every pixel (the visible ones too): logits (B, 64, levels), y
        (B, 64)."""
        return F.cross_entropy(logits.reshape(-1, self.levels).float(), y.reshape(-1))

    def correct(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> Scored:
        """Hidden pixels right, hidden pixels, images with every hidden pixel right, images
        (``target_mask``: the hidden pixels; None: every pixel)."""
        pred = logits.reshape(y.shape[0], -1, self.levels).argmax(-1)  # (B, 64)
        hidden = torch.ones_like(y, dtype=torch.bool) if target_mask is None else target_mask
        hit = (pred == y) & hidden
        all_right = (hit | ~hidden).all(dim=1)
        return Scored(hit.sum(), hidden.sum(), all_right.sum(), y.shape[0])

    def save_examples(self, model: nn.Module, path: Path) -> Path:
        return save_dense_examples(model, self, path)


@torch.no_grad()
def save_dense_examples(model: nn.Module, task: DigitsInpaint, path: Path, n: int = 8) -> Path:
    """A PNG of the first ``n`` test images: inputs (hole in red), predictions, targets."""
    from unicomp.plots import pyplot, save_figure

    plt = pyplot()

    batch = task.split("test")[:n]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(batch.x.to(device), None if batch.mask is None else batch.mask.to(device))
    model.train(was_training)
    n = len(batch)
    top = task.levels - 1
    pred = logits.float().reshape(n, 64, -1).argmax(-1).cpu() / top  # (n, 64)
    target = batch.y.float() / top  # (n, 64)
    inputs = batch.x[..., 0].clone()  # (n, 64)
    inputs[batch.x[..., 1] == 0] = float("nan")  # the hole, drawn in the "bad" colour
    cmap = plt.get_cmap("gray_r").with_extremes(bad="red")
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.9), squeeze=False)
    for row, (title, imgs) in enumerate(
        (("input", inputs), ("prediction", pred), ("target", target))
    ):
        for i in range(n):
            ax = axes[row][i]
            ax.imshow(imgs[i].reshape(8, 8).numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)
    return path
