"""Bit memory and bit XOR data: shapes, masking, held-out splits, determinism."""

from __future__ import annotations

import torch

from unicomp.tasks.bits import BitMemory, BitXOR


def test_bit_memory_paper_sizes():
    task = BitMemory(n_val=8, n_test=16)
    assert task.spec.max_len == 120 and task.spec.n_out_tokens == 20 and task.spec.d_in == 50
    batch = task.train_batch(step=3, batch_size=64, seed=1)
    assert batch.x.shape == (64, 120, 50) and batch.y.shape == (64, 1000)
    strings = batch.x[:, :100].reshape(64, 5, 1000)
    query = batch.x[:, 100:].reshape(64, 1000)
    target = batch.y.float() * 2 - 1
    # The target is one of the five strings, and the query shows it with about half masked.
    match = (strings == target[:, None]).all(-1)
    assert match.any(1).all()
    shown = query != 0
    assert torch.equal(query[shown], target[shown])
    assert 0.45 < 1 - shown.float().mean() < 0.55


def test_bit_memory_is_deterministic_per_seed_and_step():
    task = BitMemory(n_bits=100, bits_per_token=10, n_val=4, n_test=4)
    a, b = task.train_batch(5, 4, 0), task.train_batch(5, 4, 0)
    c = task.train_batch(6, 4, 0)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert torch.equal(
        task.split("test").x,
        BitMemory(n_bits=100, bits_per_token=10, n_val=4, n_test=4).split("test").x,
    )


def test_bit_xor_targets_and_held_out_pairs():
    task = BitXOR()
    test, val = task.split("test"), task.split("val")
    assert test.x.shape == (256, 10, 1) and test.y.shape == (256, 5)
    bits = (test.x.squeeze(-1) > 0).long()
    assert torch.equal(test.y, bits[:, :5] ^ bits[:, 5:])

    def keys(batch):
        return {tuple(row.tolist()) for row in (batch.x.squeeze(-1) > 0).long()}

    train_keys = set()
    for step in range(40):
        train_keys |= keys(task.train_batch(step, 64, seed=0))
    assert not train_keys & keys(test) and not train_keys & keys(val)
    assert not keys(test) & keys(val)
    assert len(train_keys | keys(test) | keys(val)) > 900  # nearly all 1024 pairs covered
