"""What every task provides to the model builders and the one training loop.

A task is data + the shape of its inputs and outputs + its metric. Two kinds of data:

* generated tasks (bit memory, bit XOR) draw each training batch from a generator seeded by
  (seed, step), so a resumed run sees exactly the batches it would have seen;
* fixed data sets (``TensorTask``) walk seeded epoch permutations, again a pure function of
  (seed, step).

Validation and test splits are fixed, held-out tensors evaluated in full.

A task may also declare its natural input form (``Task.input_form``: a ``Codec`` that encodes
natural inputs, e.g. a list of numbers per token, as the task's pipeline does), which
``load_adapter(...).predict`` and ``unicomp serve`` use.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from unicomp.errors import UnicompError

Inputs = torch.Tensor | dict[str, torch.Tensor]


def _map(x: Inputs, fn) -> Inputs:
    return {k: fn(v) for k, v in x.items()} if isinstance(x, dict) else fn(x)


def _copy(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; a host tensor bound for a GPU goes through pinned memory, copied
    without blocking (the copy overlaps the device's work instead of stalling the host)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
            _map(self.x, lambda t: _copy(t, device)),
            _copy(self.y, device),
            None if self.mask is None else _copy(self.mask, device),
            None if self.target_mask is None else _copy(self.target_mask, device),
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
    """What ``Task.correct`` counts on a batch; the loop sums it over batches. Counts that
    depend on values are 0-dim tensors on the logits' device, never read per batch (a read is a
    host sync on a GPU): the loop sums them there and reads the sums at evaluation."""

    hits: int | torch.Tensor  # scored elements predicted right
    elements: int | torch.Tensor  # scored elements (0: the task counts none, e.g. continuous)
    exact: int | torch.Tensor  # examples with every scored element right
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


# --- a task's natural input form (Task.input_form) -------------------------------------------
class InputError(UnicompError, ValueError):
    """One input is not what the task takes; the message names which and why."""


def fail(i: int, what: str) -> InputError:
    return InputError(f"input {i}: {what}")


def describe_item(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Codec:
    """Base: ``input``/``output`` describe one item in words; ``example`` is a valid input."""

    spec: TaskSpec
    input: str = ""
    output: str = ""
    example: Any = None

    def encode(self, items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``items`` -> ``(x, mask)``: x (B, T, d_in) float or (B, T) token ids; mask (B, T)
        or None (no padding). A bad item raises :class:`InputError` naming it."""
        raise NotImplementedError

    def decode(self, logits: torch.Tensor) -> list[Any]:
        """Class ids per predicted element: (B,) for classification, (B, N) for sequences."""
        return logits.reshape(logits.shape[0], -1, self.spec.n_classes).argmax(-1).tolist()

    def encode_context(
        self, items: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[Any] | None]:
        """``encode`` plus what :meth:`finish` needs of each item to put its output back in
        natural form (a list, one entry per item), or None where it needs nothing (the
        default): e.g. a forecast window's own mean and std."""
        x, mask = self.encode(items)
        return x, mask, None

    def finish(self, logits: torch.Tensor, context: list[Any] | None) -> list[Any]:
        """Natural outputs from the model's output for items encoded by
        :meth:`encode_context` (``context``: its third value, rows in the same order)."""
        return self.decode(logits)

    def describe(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "example": self.example}

    def state(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this codec as ``type(self)(spec,
        **state)`` without the task or its data (what an adapter file records of a codec a
        task declared with ``Task.input_form``). A codec that needs more than ``spec``
        overrides it."""
        return {}


# The memory rule for a task's stored data: on a GPU it is placed there once when it takes at
# most this share of the memory free after the model is placed (the rest is for activations,
# gradients and the optimizer); otherwise batches are gathered on the host and copied through
# pinned memory without blocking (Batch.to).
DATA_SHARE_OF_FREE_MEMORY = 0.25

# Task arguments from flags (--task-arg) are bounded before the task allocates anything: an
# integer argument is at most MAX_TASK_INT unless the task's ``arg_limits`` says otherwise, and
# what the arguments make the constructor store at most MAX_TASK_NUMBERS numbers (2^28: 2 GiB
# of int64; bit memory at the paper's sizes stores 7.5 million).
MAX_TASK_INT = 10**7
MAX_TASK_NUMBERS = 2**28


def data_placement(nbytes: int, device: torch.device) -> str:
    """Where a task's ``nbytes`` of stored data live while training on ``device``: "device"
    (placed there once), "pinned" (on the host; batches copied through pinned memory) or
    "host" (the device is the CPU)."""
    if device.type == "cpu":
        return "host"
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return "device" if nbytes <= DATA_SHARE_OF_FREE_MEMORY * free else "pinned"
    return "device"  # the meta device (the device tests) and other accelerators


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Batch):
        yield from _tensors([obj.x, obj.y, obj.mask, obj.target_mask])
    elif isinstance(obj, dict):
        yield from _tensors(list(obj.values()))
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _tensors(item)


def _moved(obj, device: torch.device):
    """``obj`` (tensors, Batches, dicts of them) with every tensor on ``device``; anything
    else (ragged sequences kept as arrays) as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Batch):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _moved(v, device) for k, v in obj.items()}
    return obj


def shard_range(batch_size: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s part of a global batch of ``batch_size`` examples split over ``world``
    processes (in order: rank 0 the first part)."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


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

    # Attributes that hold the task's stored tensors, which ``place`` moves to the training
    # device (empty: the task draws or builds its data on the host each step).
    stored: tuple[str, ...] = ()

    # Bounds of integer constructor arguments, checked before the task is built (by
    # ``experiments.common.build_task``): {name: (lowest, highest)}. Integer arguments not
    # listed are sizes or counts in 0..MAX_TASK_INT (seeds: 0..2^63-1).
    arg_limits: dict[str, tuple[int, int]] = {}

    @classmethod
    def stored_numbers(cls, args: dict) -> int:
        """How many numbers the constructor allocates for ``args`` (every argument, defaults
        filled in), so that sizes whose product is too large are refused before anything is
        allocated; 0: not known (a data set's size is known only once read)."""
        return 0

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        raise NotImplementedError

    def train_shard(self, step: int, batch_size: int, seed: int, rank: int, world: int) -> Batch:
        """Rank ``rank``'s part of the global batch ``train_batch(step, batch_size, seed)``
        (``shard_range``). Here the whole batch is drawn and cut (generated tasks draw cheap
        examples, and must draw the same ones as a 1-process run); tasks that gather stored
        examples pick the rank's part first and gather only it."""
        batch = self.train_batch(step, batch_size, seed)
        return batch if world == 1 else batch[shard_range(batch_size, rank, world)]

    def place(self, device: torch.device) -> str:
        """Put the stored data (``stored``) on ``device`` once where it fits
        (``data_placement``), so batches are gathered there; ``unplace`` undoes it. Returns
        where the data is: "device", "pinned" or "host"."""
        held = {a: getattr(self, a) for a in self.stored if hasattr(self, a)}
        nbytes = sum(t.nbytes for t in _tensors(list(held.values())))
        where = data_placement(nbytes, device) if held else "host"
        if where == "device":
            self.__dict__.setdefault("_host_data", held)
            for attr, value in held.items():
                setattr(self, attr, _moved(value, device))
        return where

    def unplace(self) -> None:
        """The stored data back where it was before ``place`` (the host copies, kept)."""
        for attr, value in self.__dict__.pop("_host_data", {}).items():
            setattr(self, attr, value)

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

    def input_form(self) -> Codec | None:
        """The task's natural input form, for ``load_adapter(...).predict`` and ``unicomp
        serve``: a :class:`Codec` that encodes natural inputs exactly as this task's data
        pipeline does, rebuilt from its ``state()`` without the data (an adapter file records
        the codec's class and state). None: the task declares none here (the built-in tasks'
        forms are also in the table ``unicomp.serving.codecs.CODECS``); an adapter of a task with no
        form exports, with a warning, but is not served. For example::

            class EightNumbers(Codec):
                def __init__(self, spec, mean: float, std: float):
                    super().__init__(spec, input="a list of 8 numbers",
                                     output="the class id", example=[0.0] * 8)
                    self.mean, self.std = mean, std

                def state(self):  # JSON; EightNumbers(spec, **state) rebuilds it
                    return {"mean": self.mean, "std": self.std}

                def encode(self, items):
                    for i, item in enumerate(items):
                        if not (isinstance(item, list) and len(item) == 8):
                            raise InputError(f"input {i}: expected a list of 8 numbers")
                    x = (torch.tensor(items, dtype=torch.float64) - self.mean) / self.std
                    return x.float().reshape(len(items), 8, 1), None  # (B, T, d_in), mask

            class MyTask(TensorTask):
                ...
                def input_form(self):
                    return EightNumbers(self.spec, self.mean, self.std)

        ``Codec.decode`` answers, per input, a list of class ids (argmax, one per predicted
        element); override it for other outputs (one class name, a value)."""
        return None

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        """What a run records in metrics.json about this task beyond ``data_source`` and
        ``split_sizes`` (checksums of the files read, statistics, how splits were made,
        metrics in the data's own units), given the training loop's ``result``."""
        return {}

    def test_metrics(self, model, batch_size: int = 256) -> dict[str, float]:
        """Scores beyond the loop's loss and accuracy, of ``model`` (its best weights, where it
        is) on the test split, added to metrics.json: e.g. a forecast's MSE and MAE. None here."""
        return {}

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
        return Scored(hit.sum(), hit.numel(), hit.all(1).sum(), y.shape[0])


def length_buckets(max_len: int, n: int = 8) -> list[int]:
    """The padded lengths a compiled model sees for variable-length batches: ``max_len`` and
    its halvings, each rounded up to a multiple of 8, at most ``n`` of them (torch.compile
    keeps one graph per input shape, up to 8 by default, instead of one per batch length)."""
    lengths = {max_len}
    for i in range(1, n):
        lengths.add(min(max_len, -(-max(1, max_len >> i) // 8) * 8))
    return sorted(lengths)[-n:]


def pad_to_bucket(batch: Batch, buckets: list[int]) -> Batch:
    """``batch`` right-padded (token 0 or zero vectors, mask 0) to the smallest bucket that
    holds it: for batches padded to their own longest (``mask`` set, ``x`` one tensor). The
    padding is masked, as a batch's own is, so the model computes the same outputs; a batch
    longer than every bucket, or without padding, is returned as it is."""
    if batch.mask is None or isinstance(batch.x, dict):
        return batch
    width = batch.mask.shape[1]
    target = next((b for b in buckets if b >= width), width)
    if target == width:
        return batch
    extra = target - width
    pad_x = (0, 0, 0, extra) if batch.x.dim() == 3 else (0, extra)
    return Batch(F.pad(batch.x, pad_x), batch.y, F.pad(batch.mask, (0, extra)), batch.target_mask)


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

    @property
    def stored(self) -> tuple[str, ...]:  # type: ignore[override]
        # placed only where training indexes ``data`` as it is (not where a subclass builds
        # its batches otherwise, e.g. from host-side draws)
        return ("data",) if type(self).train_batch is TensorTask.train_batch else ()

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

    def train_shard(self, step: int, batch_size: int, seed: int, rank: int, world: int) -> Batch:
        if type(self).train_batch is not TensorTask.train_batch:
            return super().train_shard(step, batch_size, seed, rank, world)
        idx = self.train_indices(step, batch_size, seed)[shard_range(batch_size, rank, world)]
        return self.data["train"][idx]
