"""Device bugs caught on the CPU: what would crash or go wrong on a GPU, or under torchrun,
checked with the meta device and a mocked torch.distributed (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import small_train
from unicomp.config import FPTConfig
from unicomp.registry import FREEZE_POLICIES
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

    meta = torch.device("meta")
    monkeypatch.setattr(experiments, "pick_device", lambda name: meta)
    seen = {}

    def probe(model, x, mask, loss_fn, device, precision):
        seen["x"] = x.device
        logits = torch.empty(x.shape[0], 5, 2, device=device)  # (B, n_out, classes)
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
