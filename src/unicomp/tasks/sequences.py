"""Variable-length discrete-token data (ListOps, proteins): ragged storage, padding and masks.

Sequences are kept as one flat ``uint8`` array plus offsets, so 96,000 ListOps expressions of
up to 2,000 tokens cost about 100 MB instead of the 1.5 GB of an int64 matrix padded to the
longest one. Token id 0 is padding everywhere (``TaskSpec.vocab_size`` convention); padding
goes on the right with mask 0, so positions count from the first real token and the FPT's
"last real token" readout never reads padding.

A whole validation or test split is one ``Batch`` padded to the split's longest sequence.
Training batches are padded only to the longest sequence in the batch: since padding is on
the right and masked, the model computes the same outputs for the real tokens as it would with
split-wide padding, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unicomp.tasks.base import Batch, TensorTask


class TokenSequences:
    """Labelled token sequences of different lengths.

    Quacks like a ``Batch`` where ``TensorTask.train_batch`` needs it (``len`` and indexing
    with an index tensor), so the seeded epoch permutations of ``TensorTask`` apply unchanged.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, labels: np.ndarray):
        if len(offsets) != len(labels) + 1:
            raise ValueError("offsets must have one entry more than labels")
        self.flat = np.ascontiguousarray(flat, dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    @classmethod
    def from_list(cls, seqs: Sequence[bytes | np.ndarray], labels: Sequence[int]):
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.empty(int(offsets[-1]), dtype=np.uint8)
        for s, start, end in zip(seqs, offsets[:-1], offsets[1:], strict=True):
            flat[start:end] = np.frombuffer(s, dtype=np.uint8) if isinstance(s, bytes) else s
        return cls(flat, offsets, np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def truncate(self, max_tokens: int) -> tuple[TokenSequences, int]:
        """Keep the first ``max_tokens`` tokens of each sequence; also return how many were cut."""
        lengths = self.lengths
        cut = int((lengths > max_tokens).sum())
        if not cut:
            return self, 0
        keep = [self.sequence(i)[:max_tokens] for i in range(len(self))]
        return TokenSequences.from_list(keep, self.labels), cut

    def __getitem__(self, idx: torch.Tensor | np.ndarray | slice | Sequence[int]) -> Batch:
        """The selected sequences as a Batch padded to their own longest one."""
        if isinstance(idx, slice):
            rows = np.arange(len(self))[idx]
        else:
            rows = np.asarray(idx.tolist() if isinstance(idx, torch.Tensor) else idx, np.int64)
        rows = rows.reshape(-1)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        width = int((ends - starts).max()) if len(rows) else 0
        x = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, (start, end) in enumerate(zip(starts, ends, strict=True)):
            x[r, : end - start] = self.flat[start:end]
            mask[r, : end - start] = 1
        y = torch.from_numpy(self.labels[rows])
        return Batch(torch.from_numpy(x), y, torch.from_numpy(mask))

    def to_batch(self) -> Batch:
        """Every sequence, padded to the longest: a whole evaluation split."""
        return self[slice(None)]


class SequenceTask(TensorTask):
    """A classification task over token sequences: train, val and test ``TokenSequences``.

    ``split("val")`` and ``split("test")`` are the complete splits (every example, none
    dropped); ``train_batch`` walks TensorTask's seeded epoch permutations of ``train``.
    """

    def set_splits(self, splits: dict[str, TokenSequences]) -> None:
        self.sequences = {name: splits[name] for name in ("train", "val", "test")}
        # Evaluation splits become padded Batches once; train stays ragged (see module doc).
        self.data = {  # type: ignore[assignment]  # train: TokenSequences, indexable like Batch
            "train": splits["train"],
            "val": splits["val"].to_batch(),
            "test": splits["test"].to_batch(),
        }

    def split_sizes(self) -> dict[str, int]:
        return {name: len(seqs) for name, seqs in self.sequences.items()}

    def longest(self) -> int:
        return max(int(s.lengths.max()) for s in self.sequences.values() if len(s))
