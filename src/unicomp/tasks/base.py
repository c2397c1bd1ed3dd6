"""What every task provides to the model builders and the one training loop.

A task is data + the shape of its inputs and outputs + its metric. Two kinds of data:

* generated tasks (bit memory, bit XOR) draw each training batch from a generator seeded by
  (seed, step), so a resumed run sees exactly the batches it would have seen;
* fixed data sets (``TensorTask``) walk seeded epoch permutations, again a pure function of
  (seed, step).

Validation and test splits are fixed, held-out tensors evaluated in full.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

Inputs = torch.Tensor | dict[str, torch.Tensor]


def _map(x: Inputs, fn) -> Inputs:
    return {k: fn(v) for k, v in x.items()} if isinstance(x, dict) else fn(x)


@dataclass
class Batch:
    """x: (B, T, d_in) float vector tokens, (B, T) long token ids, or a dict of such tensors
    for models with several input streams (the Decision Transformer); the model is called as
    ``model(x, mask)``. y: (B,) class ids, (B, N) per-element class ids, or regression targets.
    mask: (B, T) 1 for real tokens, 0 for padding; None = all real.
    target_mask: which elements of ``y`` are scored, bool, y's shape without a trailing
    per-element dimension (a DT's real steps (B, K); an inpainting task's hidden pixels);
    None = all. The task's ``loss`` and ``correct`` receive it."""

    x: Inputs
    y: torch.Tensor
    mask: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            _map(self.x, lambda t: t.to(device)),
            self.y.to(device),
            None if self.mask is None else self.mask.to(device),
            None if self.target_mask is None else self.target_mask.to(device),
        )

    def __getitem__(self, idx) -> Batch:
        """Select examples (a slice or an index tensor) from x, y and the masks alike."""
        return Batch(
            _map(self.x, lambda t: t[idx]),
            self.y[idx],
            None if self.mask is None else self.mask[idx],
            None if self.target_mask is None else self.target_mask[idx],
        )


class Scored(NamedTuple):
    """What ``Task.correct`` counts on a batch; the loop sums it over batches."""

    hits: int  # scored elements predicted right
    elements: int  # scored elements (0: the task counts none, e.g. continuous actions)
    exact: int  # examples with every scored element right
    examples: int


@dataclass
class TaskSpec:
    """Sizes that the model builders read."""

    max_len: int  # tokens per input
    d_out: int  # outputs per read position (classes, or bits x classes for sequence outputs)
    n_classes: int  # classes per predicted element; logits reshape to (..., n_classes)
    d_in: int | None = None  # vector tokens: values per token
    vocab_size: int | None = None  # discrete tokens: vocabulary size (padding id 0)
    n_out_tokens: int | None = None  # sequence outputs: read the last n positions; None = one


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A generator for (seed, step): makes sampling a pure function of the step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class Task:
    """Base class. Subclasses set ``spec`` and ``data_source`` and implement the methods."""

    name: str = ""
    spec: TaskSpec
    data_source: str = ""  # which data a run really used, recorded in metrics.json
    default_train: dict = {}  # TrainConfig overrides that suit the task (e.g. steps, lr)
    # Validation score that picks the best checkpoint: "accuracy" (higher is better) or
    # "loss" (lower is better; for regression tasks, whose ``correct`` may count nothing).
    select_by: str = "accuracy"
    vocab: tuple[str, ...] | None = None  # token-id tasks: each id's token (attention plots)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        raise NotImplementedError

    def split(self, name: str) -> Batch:
        """The whole held-out split ``val`` or ``test`` as one Batch (evaluated in chunks)."""
        raise NotImplementedError

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in ("val", "test")}

    def fixed_train_split(self) -> Batch | None:
        """The training examples as one Batch in the form ``split`` gives (what the selected
        weights are scored on for the train-test gap), or None where training draws fresh
        examples or cuts them anew each step (nothing fixed to overfit)."""
        return None

    # --- metric: cross-entropy and accuracy over every predicted element -----------------
    # ``target_mask``: the batch's (Batch.target_mask); tasks that set none receive None.
    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, self.spec.n_classes).float(), y.reshape(-1))

    def correct(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> Scored:
        pred = logits.reshape(y.shape[0], -1, self.spec.n_classes).argmax(-1)
        hit = pred == y.reshape(y.shape[0], -1)
        return Scored(int(hit.sum()), hit.numel(), int(hit.all(1).sum()), y.shape[0])


def iter_chunks(batch: Batch, size: int) -> Iterator[Batch]:
    for i in range(0, len(batch), size):
        yield batch[i : i + size]


@functools.lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s order of the ``n`` training examples; kept, since every step of the
    epoch reads it (drawing it costs more than a whole step of a head-only model)."""
    return torch.randperm(n, generator=batch_generator(seed, -1 - epoch))


def epoch_indices(n: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The training examples (indices into ``0..n-1``) of ``step``: the global sample positions
    ``step * batch_size ... (step + 1) * batch_size - 1`` walk seeded epoch permutations, a
    fresh one per epoch, so a batch is a pure function of (seed, step)."""
    start = step * batch_size
    if start // n == (start + batch_size - 1) // n:  # within one epoch: a slice of its order
        return _epoch_permutation(n, seed, start // n)[start % n : start % n + batch_size].clone()
    pos = torch.arange(start, start + batch_size)
    epochs, offsets = pos // n, pos % n
    idx = torch.empty_like(pos)
    for epoch in epochs.unique().tolist():
        perm = _epoch_permutation(n, seed, epoch)
        sel = epochs == epoch
        idx[sel] = perm[offsets[sel]]
    return idx


class TensorTask(Task):
    """A task over fixed tensors: ``self.data[split] = Batch`` for train, val and test."""

    data: dict[str, Batch]

    def split(self, name: str) -> Batch:
        return self.data[name]

    def fixed_train_split(self) -> Batch | None:
        # data["train"] is in evaluation form only where training indexes it as it is
        plain = type(self).train_batch is TensorTask.train_batch
        return self.data["train"] if plain and "train" in self.data else None

    def train_indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """Which training examples ``train_batch`` returns for (step, batch_size, seed); what
        unicomp.features uses to pick the same examples' cached features."""
        return epoch_indices(len(self.data["train"]), step, batch_size, seed)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return self.data["train"][self.train_indices(step, batch_size, seed)]
