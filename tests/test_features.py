"""Output-only training from cached features (unicomp.features): the same training as the
normal output-only path, a disk cache that is hit, checked and keyed, refusals, resume."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import small_train
from unicomp import features as fc
from unicomp.config import FPTConfig
from unicomp.errors import UnicompError
from unicomp.experiments.common import build_task
from unicomp.experiments.fpt import build_fpt, run_fpt
from unicomp.registry import Entry
from unicomp.tasks.base import Batch, TaskSpec, TensorTask, batch_generator, epoch_indices
from unicomp.tasks.catalog import TASKS
from unicomp.tasks.sequences import SequenceTask, TokenSequences
from unicomp.train import load_trainable_state


class TinyTensorTask(TensorTask):
    """Fixed random vector tokens. Classification (3 classes from the token sums), or with
    ``seq_out`` two output tokens of 2 classes each; ``ragged``: right-padded, masked
    sequences of 3 to 6 tokens."""

    name = "tiny-tensor"

    def __init__(
        self, n_train: int = 60, seq_out: bool = False, ragged: bool = False, data_seed: int = 0
    ):
        T, d, n = 6, 3, n_train + 40
        gen = torch.Generator().manual_seed(data_seed)
        x = torch.randn(n, T, d, generator=gen)
        mask = None
        if ragged:
            lengths = torch.randint(3, T + 1, (n,), generator=gen)
            mask = (torch.arange(T)[None] < lengths[:, None]).long()
            x = x * mask[..., None]
        if seq_out:
            self.spec = TaskSpec(max_len=T, d_in=d, d_out=2, n_classes=2, n_out_tokens=2)
            y = (x[:, -2:, 0] > 0).long()  # (n, 2)
        else:
            self.spec = TaskSpec(max_len=T, d_in=d, d_out=3, n_classes=3)
            y = torch.bucketize(x.sum((1, 2)), torch.tensor([-1.0, 1.0]))  # (n,) in 0..2

        def part(sl: slice) -> Batch:
            return Batch(x[sl], y[sl], None if mask is None else mask[sl])

        self.data = {
            "train": part(slice(0, n_train)),
            "val": part(slice(n_train, n_train + 20)),
            "test": part(slice(n_train + 20, n)),
        }
        self.data_source = f"generated once in the test: {n} examples, seed {data_seed}"


class TinySequences(SequenceTask):
    """Ragged token sequences (3 to 12 tokens, ids 1-15): is the first token above the last?"""

    name = "tiny-sequences"

    def __init__(self, data_seed: int = 0):
        gen = np.random.default_rng(data_seed)
        seqs = [gen.integers(1, 16, gen.integers(3, 13)).astype(np.uint8) for _ in range(100)]
        labels = [int(q[0] > q[-1]) for q in seqs]
        parts = {"train": slice(0, 60), "val": slice(60, 80), "test": slice(80, 100)}
        self.set_splits({k: TokenSequences.from_list(seqs[v], labels[v]) for k, v in parts.items()})
        self.spec = TaskSpec(max_len=12, d_out=2, n_classes=2, vocab_size=16)
        self.data_source = f"generated once in the test, seed {data_seed}"


class AugmentedTiny(TinyTensorTask):
    augment = True

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        batch = super().train_batch(step, batch_size, seed)
        noise = torch.randn(batch.x.shape, generator=batch_generator(seed, step))
        return Batch(batch.x + 0.1 * noise, batch.y, batch.mask)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """The tiny task registered for this test only; the cache in a temporary folder."""
    for task in (TinyTensorTask, TinySequences):
        monkeypatch.setitem(TASKS._entries, task.name, Entry(task.name, task))
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))
    fc.clear_memory()
    yield
    fc.clear_memory()


def _cfg(backbone: str, out, feature_cache="auto", task_args=None, **kw) -> FPTConfig:
    train = {"steps": 30, "eval_every": 5, "lr": 1e-2, **kw.pop("train", {})}
    return FPTConfig(
        task=kw.pop("task", "tiny-tensor"),
        backbone=backbone,
        freeze=kw.pop("freeze", "output-only"),
        attn_implementation="eager",
        task_args=task_args or {},
        feature_cache=feature_cache,
        out=str(out),
        train=small_train(**train),
        **kw,
    )


def _curve(out) -> list[dict]:
    with (out / "curve.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _column(out, name: str) -> np.ndarray:
    return np.array([row[name] for row in _curve(out)])


@pytest.mark.parametrize(
    ("backbone", "task_args", "readout"),
    [
        ("tiny_gpt2", {}, "last"),
        ("tiny_bert", {"ragged": True}, "mean"),
        ("tiny_gpt2", {"ragged": True}, "last"),
        ("tiny_llama", {"seq_out": True}, "last"),
        ("tiny_bert", {"task": "tiny-sequences"}, "last"),
    ],
)
def test_cached_training_matches_the_normal_path(tmp_path, request, backbone, task_args, readout):
    path = request.getfixturevalue(backbone)
    task_args = dict(task_args)
    kw = {"readout": readout, "task": task_args.pop("task", "tiny-tensor")}
    normal = run_fpt(_cfg(path, tmp_path / "normal", "off", task_args, **kw))
    cached = run_fpt(_cfg(path, tmp_path / "cached", "disk", task_args, **kw))
    assert normal["feature_cache"] == "off: feature_cache=off was asked for"
    assert cached["feature_cache"].startswith("computed, saved to ")
    assert cached["feature_seconds"] >= 0 and "feature_seconds" not in normal
    val_normal, val_cached = (_column(tmp_path / r, "val_loss") for r in ("normal", "cached"))
    assert len(val_normal) == 6
    assert abs(val_normal[-1] - val_normal[0]) > 1e-3  # the head did learn something
    np.testing.assert_allclose(val_cached, val_normal, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        _column(tmp_path / "cached", "train_loss"),
        _column(tmp_path / "normal", "train_loss"),
        rtol=0,
        atol=1e-5,
    )
    for key in ("best_step", "steps", "test_accuracy", "val_accuracy", "trainable_params"):
        assert cached[key] == normal[key], key
    assert cached["test_loss"] == pytest.approx(normal["test_loss"], abs=1e-5)
    best_n, best_c = (load_file(tmp_path / r / "best.safetensors") for r in ("normal", "cached"))
    assert set(best_c) == set(best_n) == {"head.weight", "head.bias"}
    for name in best_n:
        torch.testing.assert_close(best_c[name], best_n[name], rtol=0, atol=1e-5)


def test_cached_batches_are_the_wrapped_tasks_examples(tiny_gpt2, tmp_path):
    cfg = _cfg(tiny_gpt2, tmp_path / "r", task_args={"ragged": True})
    task = build_task(cfg.task, cfg.task_args)
    model, _ = build_fpt(cfg, task)
    feats = fc.extract_features(model, task, torch.device("cpu"), "fp32", chunk_size=7)
    cached = fc.CachedFeatureTask(task, feats)
    seen: list[torch.Tensor] = []
    model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.eval()
    for step in (0, 7, 8, 30):  # batch 8 of 60 examples: step 7 straddles two epochs
        want = task.train_batch(step, 8, seed=3)
        assert torch.equal(want.y, task.data["train"].y[task.train_indices(step, 8, 3)])
        got = cached.train_batch(step, 8, seed=3)
        seen.clear()
        with torch.no_grad():
            model(want.x, want.mask)
        assert torch.equal(got.y, want.y)
        torch.testing.assert_close(got.x, seen[0], rtol=0, atol=1e-5)
    assert cached.split("val").x.shape == (20, 32) and cached.split_sizes() == task.split_sizes()


def _reference_indices(n: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The sampler as first written (one seeded permutation per epoch, drawn per step)."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty_like(pos)
    for i, p in enumerate(pos.tolist()):
        perm = torch.randperm(n, generator=batch_generator(seed, -1 - p // n))
        out[i] = perm[p % n]
    return out


@pytest.mark.parametrize(("n", "batch_size"), [(60, 12), (60, 8), (7, 16), (5, 1), (50, 50)])
def test_epoch_indices_match_the_reference_sampler(n, batch_size):
    for step in range(12):
        got = epoch_indices(n, step, batch_size, seed=2)
        assert torch.equal(got, _reference_indices(n, step, batch_size, seed=2)), step


def test_epoch_indices_walk_a_permutation_per_epoch():
    steps = [epoch_indices(60, s, 12, seed=5) for s in range(10)]
    first, second = torch.cat(steps[:5]), torch.cat(steps[5:])
    assert sorted(first.tolist()) == list(range(60)) == sorted(second.tolist())
    assert not torch.equal(first, second)  # a fresh order each epoch
    assert torch.equal(epoch_indices(60, 3, 12, seed=5), steps[3])
    assert not torch.equal(epoch_indices(60, 3, 12, seed=6), steps[3])


def test_disk_cache_is_hit_and_memory_first(tiny_gpt2, tmp_path):
    first = run_fpt(_cfg(tiny_gpt2, tmp_path / "a"))
    path = tmp_path / "cache" / "features" / f"{first['feature_key']}.safetensors"
    assert first["feature_cache"] == f"computed, saved to {path}" and path.is_file()
    again = run_fpt(_cfg(tiny_gpt2, tmp_path / "b"))
    assert again["feature_cache"] == f"memory hit (key {first['feature_key']})"
    fc.clear_memory()  # a new process: only the disk remains
    third = run_fpt(_cfg(tiny_gpt2, tmp_path / "c"))
    assert third["feature_cache"] == f"disk hit {path}"
    for run in ("b", "c"):  # the same features: the same training (up to kernel rounding)
        for column in ("val_loss", "train_loss"):
            np.testing.assert_allclose(
                _column(tmp_path / run, column), _column(tmp_path / "a", column), atol=1e-6
            )
    memory_only = run_fpt(_cfg(tiny_gpt2, tmp_path / "d", "memory", {"data_seed": 9}))
    assert memory_only["feature_cache"].startswith("computed, kept in memory")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # memory: no file


@pytest.mark.parametrize("damage", ["truncate", "flip", "other-key", "garbage"])
def test_damaged_cache_file_is_detected_and_recomputed(tiny_gpt2, tmp_path, capsys, damage):
    first = run_fpt(_cfg(tiny_gpt2, tmp_path / "a", "disk"))
    path = tmp_path / "cache" / "features" / f"{first['feature_key']}.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # one byte of the last tensor's data: only the checksum can tell
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x10]) + data[-2:])
    elif damage == "other-key":
        task = build_task("tiny-tensor", {})
        feats = {s: Batch(torch.zeros(len(task.data[s]), 32), task.data[s].y) for s in fc.SPLITS}
        fc.save_features(path, "0" * 32, {}, feats)
    else:
        path.write_bytes(b"not a safetensors file")
    fc.clear_memory()
    capsys.readouterr()
    again = run_fpt(_cfg(tiny_gpt2, tmp_path / "b", "disk"))
    err = capsys.readouterr().err
    assert f"unicomp: warning: feature cache file {path} is unusable" in err
    assert again["feature_cache"].startswith(f"computed, saved to {path} (replaced an unusable")
    np.testing.assert_allclose(
        _column(tmp_path / "b", "val_loss"), _column(tmp_path / "a", "val_loss"), atol=1e-6
    )
    fc.clear_memory()
    assert run_fpt(_cfg(tiny_gpt2, tmp_path / "c", "disk"))["feature_cache"] == f"disk hit {path}"


def test_key_covers_what_determines_the_features(tiny_gpt2, tiny_bert, tmp_path):
    def key(backbone=tiny_gpt2, task_args=None, **kw) -> str:
        precision = kw.pop("precision", "fp32")
        cfg = _cfg(backbone, tmp_path / "r", task_args=task_args, **kw)
        task = build_task(cfg.task, cfg.task_args)
        model, _ = build_fpt(cfg, task)
        return fc.feature_key(cfg, task, model, precision, torch.device("cpu"))[0]

    base = key()
    assert key() == base  # deterministic
    variants = {
        "task arg": key(task_args={"data_seed": 1}),
        "another task arg": key(task_args={"n_train": 61}),
        "backbone": key(backbone=tiny_bert),
        "readout": key(readout="mean"),
        "precision": key(precision="bf16"),
        "seeded input layer": key(train={"seed": 1}),
    }
    for what, k in variants.items():
        assert k != base, what
    assert len(set(variants.values())) == len(variants)


def test_refusals_and_reasons(tiny_gpt2, tmp_path, capsys):
    from unicomp.cli import main

    with pytest.raises(UnicompError, match="feature_cache=disk cannot apply: task 'bit-xor' draws"):
        run_fpt(_cfg(tiny_gpt2, tmp_path / "x", "disk", task="bit-xor"))
    with pytest.raises(UnicompError, match="memory cannot apply: the freeze policy 'paper'"):
        run_fpt(_cfg(tiny_gpt2, tmp_path / "p", "memory", freeze="paper"))
    with pytest.raises(UnicompError, match="backbone_dropout=0.1"):
        run_fpt(_cfg(tiny_gpt2, tmp_path / "d", "disk", backbone_dropout=0.1))
    assert not (tmp_path / "x").exists()  # refused before anything was built or written
    auto = run_fpt(_cfg(tiny_gpt2, tmp_path / "xor", task="bit-xor", train={"steps": 2}))
    assert auto["feature_cache"].startswith("off: task 'bit-xor' draws fresh examples")
    paper = run_fpt(_cfg(tiny_gpt2, tmp_path / "paper", freeze="paper", train={"steps": 2}))
    assert paper["feature_cache"].startswith("off: the freeze policy 'paper'")
    why = fc.why_not_cached(AugmentedTiny(), "output-only", 0.0)
    assert why is not None and "augment=true" in why
    del AugmentedTiny.augment  # a train_batch of its own, without an augment switch
    try:
        why = fc.why_not_cached(AugmentedTiny(), "output-only", 0.0)
        assert why is not None and "AugmentedTiny.train_batch" in why
    finally:
        AugmentedTiny.augment = True
    capsys.readouterr()
    argv = ["fpt", "train", "--task", "bit-xor", "--backbone", tiny_gpt2, "--freeze"]
    argv += ["output-only", "--feature-cache", "disk", "--out", str(tmp_path / "cli")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feature_cache=disk cannot apply" in err[0]


def test_resume_of_a_cached_run(tiny_gpt2, tmp_path):
    full = run_fpt(_cfg(tiny_gpt2, tmp_path / "full", train={"steps": 20}))
    run_fpt(_cfg(tiny_gpt2, tmp_path / "part", train={"steps": 10}))
    resumed = run_fpt(_cfg(tiny_gpt2, tmp_path / "part", train={"steps": 20}), resume=True)
    assert resumed["feature_cache"].startswith("memory hit")
    for key in ("test_accuracy", "test_loss", "val_accuracy", "best_step", "steps"):
        assert resumed[key] == full[key], key
    assert _curve(tmp_path / "part") == [
        {**r, "seconds": p["seconds"]}
        for r, p in zip(_curve(tmp_path / "full"), _curve(tmp_path / "part"), strict=True)
    ]
    # The checkpoint is the FPT's: the normal path resumes a cached run (and the best weights
    # load into the full model, whose logits are then the head's on the cached features).
    shutil.rmtree(tmp_path / "part")
    run_fpt(_cfg(tiny_gpt2, tmp_path / "part", train={"steps": 10}))
    normal = run_fpt(_cfg(tiny_gpt2, tmp_path / "part", "off", train={"steps": 20}), resume=True)
    assert normal["best_step"] == full["best_step"]
    assert normal["test_loss"] == pytest.approx(full["test_loss"], abs=1e-5)
    cfg = _cfg(tiny_gpt2, tmp_path / "full")
    task = build_task(cfg.task, cfg.task_args)
    model, _ = build_fpt(cfg, task)
    load_trainable_state(model, load_file(tmp_path / "full" / "best.safetensors"))
    feats = fc.extract_features(model, task, torch.device("cpu"), "fp32")
    model.eval()
    with torch.no_grad():
        logits = model(task.split("val").x, task.split("val").mask)
        torch.testing.assert_close(fc.HeadOnly(model.head)(feats["val"].x), logits)


def test_trained_head_lands_in_the_fpt(tiny_gpt2, tmp_path):
    from unicomp.train import Placement, train

    cfg = _cfg(tiny_gpt2, tmp_path / "r")
    task = build_task(cfg.task, cfg.task_args)
    model, _ = build_fpt(cfg, task)
    frozen = fc.frozen_weights_sha256(model)
    before = model.head.weight.detach().clone()
    placement = Placement(torch.device("cpu"), "fp32", "asked for")
    prepared = fc.prepare_features(cfg, task, model, placement, "memory")
    cached = fc.CachedFeatureTask(task, prepared.features)
    train(fc.HeadOnly(model.head), cached, cfg.train, tmp_path)
    best = load_file(tmp_path / "best.safetensors")
    assert not torch.equal(model.head.weight, before)
    for name, value in best.items():
        assert torch.equal(model.state_dict()[name], value), name
    assert fc.frozen_weights_sha256(model) == frozen  # nothing below the head moved


def test_auto_skips_the_cache_for_a_run_shorter_than_one_epoch(tmp_path, tiny_gpt2):
    # 2 steps x 8 examples < 60 training examples: computing every feature would cost more
    # than the run; an explicit disk cache still caches.
    short = run_fpt(_cfg(tiny_gpt2, tmp_path / "short", train={"steps": 2, "batch_size": 8}))
    assert short["feature_cache"].startswith("off: auto: the run sees 16 training examples")
    assert "fewer than the 60" in short["feature_cache"]
    disk = run_fpt(_cfg(tiny_gpt2, tmp_path / "disk", "disk", train={"steps": 2, "batch_size": 8}))
    assert not disk["feature_cache"].startswith("off")
    assert short["test_accuracy"] == pytest.approx(disk["test_accuracy"], abs=1e-6)
