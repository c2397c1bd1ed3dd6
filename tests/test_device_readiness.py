"""Device bugs caught on the CPU: what would crash or go wrong on a GPU, or under torchrun,
checked with the meta device and a mocked torch.distributed (no GPU needed)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.conftest import small_train
from unicomp.backbones.catalog import FREEZE_POLICIES
from unicomp.config import FPTConfig
from unicomp.tasks.base import Batch, TaskSpec, TensorTask
from unicomp.tasks.bits import BitXOR


@pytest.mark.parametrize("backbone", ["tiny_gpt2", "tiny_bert", "tiny_llama"])
def test_every_freeze_policy_trains_only_parameters_that_get_gradients(request, backbone):
    """DistributedDataParallel fails at its second step on a trainable parameter that gets no
    gradient (the token embeddings and BERT's pooler under --freeze full, before)."""
    from unicomp.experiments.fpt import build_fpt

    path = request.getfixturevalue(backbone)
    task = BitXOR()
    batch = task.train_batch(0, 4, 0)
    for policy in FREEZE_POLICIES.names():
        cfg = FPTConfig(task="bit-xor", backbone=path, freeze=policy, train=small_train(),
                        attn_implementation="eager")  # fmt: skip
        model, _ = build_fpt(cfg, task)
        task.loss(model(batch.x, batch.mask), batch.y).backward()
        idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not idle, f"{backbone} --freeze {policy}: trainable without a gradient: {idle}"


def test_measured_attention_moves_the_whole_probe_batch_to_the_device(tiny_gpt2, monkeypatch):
    """The probe's targets went to the loss on the CPU while the model sat on the GPU (a crash
    of the default command on CUDA). On the meta device a tensor left behind fails alike."""
    import unicomp.experiments.fpt as experiments
    import unicomp.train as loop

    meta = torch.device("meta")
    monkeypatch.setattr(loop, "pick_device", lambda name: meta)
    seen = {}

    def probe(model, x, mask, loss_fn, placement):
        seen["x"] = x.device
        logits = torch.empty(x.shape[0], 5, 2, device=placement.device)  # (B, n_out, classes)
        loss_fn(logits)  # raises on targets left on the CPU
        return "eager (measured per training step: probe)"

    monkeypatch.setattr(experiments, "choose_attention", probe)
    cfg = FPTConfig(task="bit-xor", backbone=tiny_gpt2, train=small_train(),
                    attn_implementation="measure")  # fmt: skip
    _, summary = experiments.build_fpt(cfg, BitXOR())
    assert seen["x"] == meta and summary["attention"].startswith("eager")


def test_the_fpt_passes_no_mask_where_there_is_no_padding(tiny_bert):
    """A mask of ones costs transformers a host sync per step (padding_mask.all())."""
    from unicomp.experiments.fpt import build_fpt

    task = BitXOR()
    model, _ = build_fpt(FPTConfig(task="bit-xor", backbone=tiny_bert, train=small_train(),
                                   attn_implementation="sdpa"), task)  # fmt: skip
    masks = []
    model.backbone.register_forward_pre_hook(
        lambda mod, args, kwargs: masks.append(args[1] if len(args) > 1 else None),
        with_kwargs=True,
    )
    batch = task.train_batch(0, 4, 0)
    out = model(batch.x, batch.mask)
    assert batch.mask is None and masks == [None]
    ones = torch.ones(batch.x.shape[:2], dtype=torch.long)
    assert torch.allclose(out, model(batch.x, ones), atol=1e-5)  # the same function


class _FakeDist:
    """torch.distributed as a 2-process NCCL group sees it, recording what it is given."""

    def __init__(self):
        self.calls: list[tuple] = []

    def is_initialized(self):
        return False

    def init_process_group(self, backend, **kwargs):
        self.calls.append(("init", backend, kwargs.get("device_id")))

    def all_reduce(self, t):
        self.calls.append(("all_reduce", t.device))

    def barrier(self, **kwargs):
        self.calls.append(("barrier",))

    def destroy_process_group(self):
        self.calls.append(("destroy",))


def test_each_rank_sets_its_gpu_before_the_group_and_reduces_on_it(monkeypatch):
    import torch.distributed as td

    from unicomp.train import Dist

    fake = _FakeDist()
    for name in ("is_initialized", "init_process_group", "all_reduce", "barrier",
                 "destroy_process_group"):  # fmt: skip
        monkeypatch.setattr(td, name, getattr(fake, name))
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_to.append(d))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    # a tensor "on cuda:1" cannot be made here: the reduction's device is what is checked
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(k.get("device"))
                        or real_tensor(*a, **{**k, "device": "cpu"}))  # fmt: skip
    dist = Dist(torch.device("cuda", 1))
    assert set_to == [torch.device("cuda", 1)]  # set before the group exists
    assert fake.calls[0] == ("init", "nccl", torch.device("cuda", 1))
    dist.sum([1.0, 2.0])
    assert made[-1] == torch.device("cuda", 1)  # NCCL reduces on the rank's GPU
    dist.close()
    # on the CPU: gloo, reductions on the CPU, no GPU touched
    set_to.clear()
    fake.calls.clear()
    cpu = Dist(torch.device("cpu"))
    assert fake.calls[0] == ("init", "gloo", None) and not set_to
    cpu.sum([1.0])
    assert made[-1] == torch.device("cpu")
    cpu.close()


def test_tf32_only_on_gpus_with_tf32_cores(monkeypatch):
    from unicomp.train import tf32_capable

    assert not tf32_capable(torch.device("cpu"))
    for cap, expected in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=cap: c)
        assert tf32_capable(torch.device("cuda", 0)) is expected


def test_the_prepared_device_check_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py, the script a session lent a GPU runs as is, on the CPU."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = json.loads(out.read_text())
    assert found["failed"] == [] and found["machine"]["device"] == "cpu"
    assert found["fpt_train"]["device"] == "cpu" and found["fpt_train"]["steps"] == 20
    assert found["fpt_train"]["attention"].startswith("sdpa")
    assert found["dt_eval"]["device"] == "cpu" and "return_mean" in found["dt_eval"]
    serve = found["serve"]  # serve --device on the exported adapter, a few requests
    assert serve["device"] == "cpu" and serve["tasks"] == ["bit-xor"]
    assert serve["requests"] == 5 and serve["outputs"] == 1 + 2 + 3 + 4 + 5


# --- host syncs --------------------------------------------------------------------------------
class HostSyncs(TorchFunctionMode):
    """Counts the tensor calls that make the host wait for the device (on a GPU): reading a
    value (float, int, bool, item, tolist, cpu) or a shape that depends on values (nonzero,
    boolean-mask indexing, masked_select, unique). ``numpy()`` is not counted: it takes a host
    tensor, so on a GPU the read is the ``cpu()`` before it."""

    READS = {"__float__", "__int__", "__bool__", "__index__", "item", "tolist", "cpu"}
    SHAPED = {"nonzero", "masked_select", "unique", "argwhere", "nonzero_static"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []  # "who: call", who = "transformers" or "unicomp"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in ("__getitem__", "__setitem__") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        ):
            name = f"{name}[bool]"
        if name in self.READS or name in self.SHAPED or name.endswith("[bool]"):
            self.calls.append(f"{self._caller()}: {name}")
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _caller() -> str:
        frame = sys._getframe(2)
        while frame and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
            frame = frame.f_back
        path = frame.f_code.co_filename if frame else ""
        return "transformers" if f"{os.sep}transformers{os.sep}" in path else "unicomp"


def _syncs_per_step(model_fn, task, tmp_path, **train) -> tuple[float, list[str]]:
    """Host syncs of one training step: a run of 2 steps and one of 6, each evaluating once
    at its end (so the evaluations, reads allowed there, cancel out), compared."""
    from unicomp.train import train as run

    counts = []
    for steps in (2, 6):
        probe = HostSyncs()
        with probe:
            run(model_fn(), task, small_train(steps=steps, eval_every=steps, **train),
                tmp_path / f"run{steps}")  # fmt: skip
        counts.append(probe.calls)
    extra = list(counts[1])
    for call in counts[0]:
        extra.remove(call)
    return len(extra) / 4, extra


def _bit_xor_fpt(backbone: str):
    from unicomp.experiments.fpt import build_fpt

    task = BitXOR()
    cfg = FPTConfig(task="bit-xor", backbone=backbone, train=small_train(),
                    attn_implementation="sdpa")  # fmt: skip
    return task, lambda: build_fpt(cfg, task)[0]


def test_an_fpt_training_step_reads_the_device_once(tiny_gpt2, tmp_path):
    """Budget per optimizer step: one read by the loop (is the loss finite: a diverged run
    stops at its step), none per micro-step; the running loss and accuracy are summed on the
    device and read at evaluation. transformers' mask preparation reads once per forward (its
    check for packed sequences; skipped under torch.compile), counted apart. Before: 4 per
    micro-step (float(loss), int() twice in correct, the mask check)."""
    task, model = _bit_xor_fpt(tiny_gpt2)
    per_step, calls = _syncs_per_step(model, task, tmp_path, grad_accum=2)
    ours = [c for c in calls if c.startswith("unicomp")]
    assert len(ours) / 4 == 1, ours
    assert per_step <= 1 + 2, calls  # 2 micro-steps: at most one transformers check each


def test_a_dt_training_step_reads_the_device_once():
    """The DT's loss is a masked sum, not boolean-mask selection (two value-shaped selections
    per micro-step before, plus float(loss) and int() in correct)."""
    pytest.importorskip("gymnasium")
    from tests.test_rl import _episodes
    from unicomp.models.decision_transformer import build_decision_transformer
    from unicomp.rl.dt_task import DTTask
    from unicomp.rl.trajectories import TrajectoryDataset

    for discrete in (False, True):
        ds = TrajectoryDataset(_episodes([9, 7, 12, 8, 10, 6], obs_dim=5, act_dim=3,
                                         discrete=discrete), source="t")  # fmt: skip
        task = DTTask(ds, context=5, max_ep_len=64, val_fraction=0.2, test_fraction=0.2)

        def model(discrete=discrete):
            return build_decision_transformer(5, 3, discrete=discrete, max_length=5,
                                              max_ep_len=64, hidden_size=32)  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            per_step, calls = _syncs_per_step(model, task, Path(tmp), grad_accum=2)
        ours = [c for c in calls if c.startswith("unicomp")]
        assert len(ours) / 4 == 1, ours
        # transformers checks the padding mask: at most 2 reads per forward (2 micro-steps)
        assert per_step <= 1 + 4, calls


# --- data on the device, batches sharded before they are built ---------------------------------
class _Stored(TensorTask):
    """A fixed data set of 64 examples of 6 vector tokens; binary labels."""

    name = "stored"
    spec = TaskSpec(max_len=6, d_out=2, n_classes=2, d_in=3)

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.data = {
            split: Batch(torch.randn(n, 6, 3, generator=g), torch.randint(0, 2, (n,), generator=g))
            for split, n in (("train", 64), ("val", 16), ("test", 16))
        }


def _gathered(monkeypatch) -> list[int]:
    """The sizes of every selection of examples (Batch indexing) from now on."""
    sizes: list[int] = []
    real = Batch.__getitem__

    def spy(self, idx):
        out = real(self, idx)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(Batch, "__getitem__", spy)
    return sizes


def test_stored_data_is_placed_on_the_device_and_batches_built_there(monkeypatch):
    """On the meta device (standing in for a GPU) a task's stored splits are placed once;
    training batches and evaluation splits then come from there, not from the host."""
    task = _Stored()
    meta = torch.device("meta")
    assert task.place(torch.device("cpu")) == "host"  # nothing to move on the CPU
    assert task.place(meta) == "device"
    batch = task.train_batch(3, 8, 0)
    assert batch.x.device == meta and batch.y.device == meta
    assert task.split("val").x.device == meta
    task.unplace()
    assert task.train_batch(3, 8, 0).x.device.type == "cpu"
    # on a GPU: placed when a quarter of the free memory holds it, else pinned host copies
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (4 * 64 * 6 * 3 * 4, 10**12))
    from unicomp.tasks.base import data_placement

    assert data_placement(64 * 6 * 3 * 4, torch.device("cuda", 0)) == "device"
    assert data_placement(64 * 6 * 3 * 4 + 1, torch.device("cuda", 0)) == "pinned"


def test_host_batches_bound_for_a_gpu_are_pinned_and_copied_without_blocking(monkeypatch):
    copies = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: copies.append("pinned") or t)
    real_to = torch.Tensor.to

    def to(t, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            copies.append(kwargs.get("non_blocking"))
            return t
        return real_to(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    _Stored().train_batch(0, 4, 0).to(torch.device("cuda", 0))
    assert copies == ["pinned", True] * 2  # x and y, each pinned then copied asynchronously


def test_each_rank_gathers_only_its_part_of_the_global_batch(monkeypatch):
    task = _Stored()
    whole = task.train_batch(5, 8, 0)
    sizes = _gathered(monkeypatch)
    part = task.train_shard(5, 8, 0, rank=1, world=2)
    assert sizes == [4] and torch.equal(part.x, whole.x[4:]) and torch.equal(part.y, whole.y[4:])


def test_the_loop_trains_each_rank_on_its_shard(monkeypatch, tmp_path):
    """Under torchrun (rank 0 of 2 here, a one-process gloo group standing in for the pair;
    every reduction sums two equal values) the loop asks the task for its rank's part of each
    global batch, and only that part is gathered."""
    import torch.distributed as td

    from unicomp.train import train

    td.init_process_group("gloo", rank=0, world_size=1, store=td.HashStore())
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        real_reduce = td.all_reduce
        monkeypatch.setattr(td, "all_reduce", lambda t, **k: real_reduce(t, **k) or t.mul_(2))
        task = _Stored()
        asked = []
        real_shard = task.train_shard
        monkeypatch.setattr(task, "train_shard", lambda *a, **k: asked.append(a[3:])
                            or real_shard(*a, **k))  # fmt: skip
        sizes = _gathered(monkeypatch)
        train(_Flat(), task, small_train(steps=2, eval_every=2, batch_size=8), tmp_path)
        assert asked == [(0, 2)] * 2
        assert sizes[:2] == [4, 4]  # the training gathers: half of each global batch of 8
    finally:
        td.destroy_process_group()


class _Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(18, 2)

    def forward(self, x, mask=None):
        return self.linear(x.flatten(1))


def test_image_frames_stay_uint8_until_the_model_scales_them_on_its_device():
    """The Atari DT's frames are gathered as uint8 (a quarter of float32's bytes) where the
    task's tensors are, and scaled to [0, 1] by the model on its device."""
    pytest.importorskip("gymnasium")
    import numpy as np

    from unicomp.models.decision_transformer import build_decision_transformer
    from unicomp.rl.dt_task import DTTask
    from unicomp.rl.trajectories import Episode, TrajectoryDataset

    rng = np.random.default_rng(0)
    eps = []
    for T in (9, 7, 12, 8, 10, 6):
        trunc = np.zeros(T, bool)
        trunc[-1] = True
        eps.append(Episode(observations=rng.integers(0, 256, (T + 1, 1, 10, 10), dtype=np.uint8),
                           actions=rng.integers(0, 3, T), rewards=rng.random(T).astype(np.float32),
                           terminations=np.zeros(T, bool), truncations=trunc))  # fmt: skip
    task = DTTask(TrajectoryDataset(eps, source="t"), context=4, max_ep_len=64,
                  val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    batch = task.train_batch(0, 4, 0)
    assert batch.x["states"].dtype == torch.uint8
    assert task.place(torch.device("meta")) == "device"
    placed = task.train_batch(0, 4, 0)
    assert placed.x["states"].dtype == torch.uint8 and placed.x["states"].device.type == "meta"
    assert all(v.device.type == "meta" for v in (*placed.x.values(), placed.y, placed.mask))
    task.unplace()
    model = build_decision_transformer(0, 3, discrete=True, max_length=4, max_ep_len=64,
                                       hidden_size=32, image_shape=(1, 10, 10)).eval()  # fmt: skip
    scaled = {**batch.x, "states": batch.x["states"].float() / 255.0}
    with torch.no_grad():
        assert torch.allclose(model(batch.x, batch.mask), model(scaled, batch.mask), atol=1e-6)


def test_a_dt_acting_step_reads_the_device_once():
    """Per acting step: one read, the actions handed to the environments (two when sampling:
    the probabilities go to the host's seeded generator). Counted over steps past the
    context, where the window rolls."""
    pytest.importorskip("gymnasium")
    import numpy as np

    from unicomp.models.decision_transformer import build_decision_transformer
    from unicomp.rl.evaluate import DTAgent

    for discrete, sample, budget in ((False, False, 1), (True, False, 1), (True, True, 2)):
        for window in ("exact", "rolling"):
            model = build_decision_transformer(5, 3, discrete=discrete, max_length=4,
                                               max_ep_len=64, hidden_size=32)  # fmt: skip
            agent = DTAgent(model, 100.0, np.zeros(5), np.ones(5), 1000.0, window=window,
                            sample=sample)  # fmt: skip
            agent.reset(3)
            obs = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
            for _ in range(6):
                agent.act(obs)
                agent.observe(np.ones(3))
            probe = HostSyncs()
            with probe:
                for _ in range(4):
                    agent.act(obs)
                    agent.observe(np.ones(3))
            assert len(probe.calls) <= 4 * budget, (discrete, sample, window, probe.calls)


def test_compiled_sequence_batches_come_in_a_few_fixed_lengths(tiny_gpt2, monkeypatch, tmp_path):
    """``--compile`` on a sequence task: each training batch, padded to its own longest
    before, is padded on to one of a few bucket lengths, so torch.compile does not compile
    again for each new batch length; the model's outputs are the same."""
    from unicomp.experiments.fpt import build_fpt
    from unicomp.tasks.base import length_buckets, pad_to_bucket
    from unicomp.tasks.listops import ListOps
    from unicomp.train import train

    task = ListOps(n_train=60, n_val=12, n_test=12, min_len=10, max_len=40)
    buckets = length_buckets(task.spec.max_len)
    assert len(buckets) <= 8 and buckets[-1] == task.spec.max_len
    cfg = FPTConfig(task="listops", backbone=tiny_gpt2, train=small_train(steps=6, eval_every=6,
                    compile=True), attn_implementation="sdpa")  # fmt: skip
    model, _ = build_fpt(cfg, task)
    widths = []

    def compile_(net, **kwargs):  # records what the compiled model is shown in training
        def seen(module, args):
            if module.training:
                widths.append(args[0].shape[1])

        net.register_forward_pre_hook(seen)
        return net

    monkeypatch.setattr(torch, "compile", compile_)
    train(model, task, cfg.train, tmp_path)
    assert len(widths) == 6 and set(widths) <= set(buckets), widths
    batch = task.train_batch(0, 8, 0)
    padded = pad_to_bucket(batch, buckets)
    assert padded.x.shape[1] in buckets and padded.x.shape[1] >= batch.x.shape[1]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch.x, batch.mask), model(padded.x, padded.mask), atol=1e-5)
