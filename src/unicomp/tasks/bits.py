"""Bit memory and bit XOR (FPT paper sec. 3.1).

Bits enter as +1/-1; a masked bit enters as 0, so the input layer can tell the three apart.
Every predicted bit is a two-class output; accuracy is over all predicted bits, and
``*_sequence_accuracy`` in metrics.json counts examples with every bit right.
"""

from __future__ import annotations

import torch

from unicomp.tasks.base import Batch, Task, TaskSpec, batch_generator

_DATA_SEED = 20210309  # fixed held-out sets: the same for every run and training seed


def _signed(bits: torch.Tensor) -> torch.Tensor:
    return bits.float() * 2 - 1


class BitMemory(Task):
    """Show ``n_strings`` random strings of ``n_bits`` bits, then one of them again with each
    bit masked with probability ``mask_prob``; predict the whole original string.

    Tokens carry ``bits_per_token`` bits: (n_strings + 1) * n_bits / bits_per_token tokens
    (120 with the paper's sizes); the last n_bits / bits_per_token tokens (the query) each
    predict their own bits_per_token bits.
    """

    name = "bit-memory"
    default_train = {"steps": 3000, "lr": 1e-3, "batch_size": 32, "eval_every": 250}
    arg_limits = {
        "n_strings": (1, 1000),
        "n_bits": (1, 100_000),
        "bits_per_token": (1, 100_000),
        "n_val": (1, 1_000_000),
        "n_test": (1, 1_000_000),
    }

    @classmethod
    def stored_numbers(cls, args: dict) -> int:
        # the held-out strings and their inputs, (n_val + n_test) x (n_strings + 1) x n_bits
        return 2 * (args["n_val"] + args["n_test"]) * (args["n_strings"] + 1) * args["n_bits"]

    def __init__(
        self,
        n_strings: int = 5,
        n_bits: int = 1000,
        bits_per_token: int = 50,
        mask_prob: float = 0.5,
        n_val: int = 256,
        n_test: int = 1000,
    ):
        if n_bits % bits_per_token:
            raise ValueError(
                f"n_bits={n_bits} must be a multiple of bits_per_token={bits_per_token}"
            )
        self.n_strings, self.n_bits, self.per_token = n_strings, n_bits, bits_per_token
        self.mask_prob = mask_prob
        q = n_bits // bits_per_token
        self.spec = TaskSpec(
            max_len=(n_strings + 1) * q,
            d_in=bits_per_token,
            d_out=2 * bits_per_token,
            n_classes=2,
            n_out_tokens=q,
        )
        self.data_source = (
            f"generated: {n_strings} strings x {n_bits} bits, mask p={mask_prob},"
            f" held-out sets seeded {_DATA_SEED}"
        )
        self._held_out = {
            "val": self._sample(n_val, batch_generator(_DATA_SEED, -1)),
            "test": self._sample(n_test, batch_generator(_DATA_SEED, -2)),
        }

    def _sample(self, n: int, gen: torch.Generator) -> Batch:
        strings = torch.randint(0, 2, (n, self.n_strings, self.n_bits), generator=gen)
        pick = torch.randint(0, self.n_strings, (n,), generator=gen)
        target = strings[torch.arange(n), pick]  # (n, n_bits)
        keep = torch.rand(n, self.n_bits, generator=gen) >= self.mask_prob
        query = _signed(target) * keep  # masked bits become 0
        x = torch.cat([_signed(strings).reshape(n, -1), query], dim=1)
        x = x.reshape(n, -1, self.per_token)  # (n, T, bits_per_token)
        return Batch(x, target)  # y: (n, n_bits), read in order from the query tokens

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return self._sample(batch_size, batch_generator(seed, step))

    def split(self, name: str) -> Batch:
        return self._held_out[name]


class BitXOR(Task):
    """Two strings of ``n_bits`` bits, one bit per token (2 * n_bits tokens); the last
    n_bits tokens each predict one bit of the elementwise XOR.

    With 5 bits there are only 1024 input pairs, so random training draws would also cover
    the test pairs. We hold out pairs instead: ``test_pairs`` and ``val_pairs`` of the 1024
    never appear in training, and test accuracy measures generalisation to unseen inputs.
    """

    name = "bit-xor"
    default_train = {"steps": 1500, "lr": 3e-3, "batch_size": 32, "eval_every": 50}
    # all 4^n_bits pairs are enumerated; held-out pairs at least one each
    arg_limits = {"n_bits": (1, 10), "val_pairs": (1, 4**10), "test_pairs": (1, 4**10)}

    def __init__(self, n_bits: int = 5, val_pairs: int = 128, test_pairs: int = 256):
        if n_bits > 10:
            raise ValueError("bit-xor enumerates all input pairs; use n_bits <= 10")
        self.n_bits = n_bits
        self.spec = TaskSpec(max_len=2 * n_bits, d_in=1, d_out=2, n_classes=2, n_out_tokens=n_bits)
        codes = torch.randperm(4**n_bits, generator=batch_generator(_DATA_SEED, -3))
        if val_pairs + test_pairs >= len(codes):
            raise ValueError(f"val_pairs + test_pairs must be < {len(codes)}")
        shifts = torch.arange(2 * n_bits)
        bits = (codes[:, None] >> shifts) & 1  # (4^n, 2n): string a then string b
        self._pairs = {
            "test": bits[:test_pairs],
            "val": bits[test_pairs : test_pairs + val_pairs],
            "train": bits[test_pairs + val_pairs :],
        }
        self.data_source = (
            f"generated: all {len(codes)} pairs of {n_bits}-bit strings; "
            f"{test_pairs} test and {val_pairs} val pairs held out of training"
        )

    def _batch(self, bits: torch.Tensor) -> Batch:
        a, b = bits[:, : self.n_bits], bits[:, self.n_bits :]
        return Batch(_signed(bits).unsqueeze(-1), a ^ b)  # x: (n, 2n, 1), y: (n, n_bits)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        train = self._pairs["train"]
        idx = torch.randint(0, len(train), (batch_size,), generator=batch_generator(seed, step))
        return self._batch(train[idx])

    def split(self, name: str) -> Batch:
        return self._batch(self._pairs[name])

    def fixed_train_split(self) -> Batch:
        return self._batch(self._pairs["train"])
