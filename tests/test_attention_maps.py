"""A finished FPT run loaded back whole (load_fpt_run), the run: backbone loader sharing it,
and ``unicomp fpt attention`` (heatmaps per layer + the raw maps), on tiny backbones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import cli_train
from unicomp import features as fc
from unicomp.backbones.loading import load_backbone
from unicomp.cli import main
from unicomp.errors import UnicompError
from unicomp.experiments import fpt as experiments
from unicomp.experiments.fpt import load_fpt_run
from unicomp.registry import Entry
from unicomp.tasks.bits import BitMemory
from unicomp.tasks.catalog import TASKS
from unicomp.tools.attention import token_labels
from unicomp.train import evaluate

FP32 = ("--precision", "fp32", "--eval-batch-size", "64")
MEMORY_ARGS = ("n_strings=2", "n_bits=8", "bits_per_token=2", "n_val=16", "n_test=16")


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_gpt2) -> Path:
    """bit-xor on the tiny GPT-2 (a decoder), trained with sdpa attention."""
    out = tmp_path_factory.mktemp("runs") / "xor-gpt2"
    args = ("--task", "bit-xor", "--backbone", tiny_gpt2, "--attn-implementation", "sdpa")
    cli_train(out, *args, *FP32)
    return out


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, tiny_bert) -> Path:
    """A small bit-memory (12 tokens of 2 bits, the last 4 the query) on the tiny BERT."""
    out = tmp_path_factory.mktemp("runs") / "memory-bert"
    task_args = [a for kv in MEMORY_ARGS for a in ("--task-arg", kv)]
    cli_train(out, "--task", "bit-memory", *task_args, "--backbone", tiny_bert, *FP32)
    return out


@pytest.fixture
def tiny_tensor(monkeypatch, tmp_path):
    """The fixed-data test task of test_features (ragged: right-padded, masked) registered."""
    from tests.test_features import TinyTensorTask

    monkeypatch.setitem(
        TASKS._entries, TinyTensorTask.name, Entry(TinyTensorTask.name, TinyTensorTask)
    )
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))
    fc.clear_memory()
    yield TinyTensorTask.name
    fc.clear_memory()


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unicomp: error: "), err
    return err[0]


# --- load_fpt_run -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["gpt2_run", "bert_run"])
def test_load_fpt_run_gives_the_runs_test_accuracy(which, request):
    run = request.getfixturevalue(which)
    model, task, cfg = load_fpt_run(run)
    assert not model.training and cfg.out == str(run)
    metrics = _metrics(run)
    test = evaluate(model, task, task.split("test"), cfg.train, torch.device("cpu"))
    assert test["accuracy"] == metrics["test_accuracy"]
    assert test["loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    params = dict(model.named_parameters())
    saved = load_file(str(run / "best.safetensors"))
    assert {"embed_in.weight", "head.weight"} <= set(saved)
    for name, tensor in saved.items():
        assert torch.equal(params[name], tensor), name


def test_output_only_run_from_cached_features_loads(tiny_tensor, tmp_path, tiny_bert):
    run = tmp_path / "cached"
    args = ("--task", tiny_tensor, "--task-arg", "ragged=true", "--backbone", tiny_bert)
    metrics = cli_train(run, *args, "--freeze", "output-only", "--feature-cache", "memory", *FP32)
    assert metrics["feature_cache"].startswith("computed, kept in memory")
    assert set(load_file(str(run / "best.safetensors"))) == {"head.weight", "head.bias"}
    model, task, cfg = load_fpt_run(run)
    test = evaluate(model, task, task.split("test"), cfg.train, torch.device("cpu"))
    assert test["accuracy"] == metrics["test_accuracy"]
    assert test["loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)


def test_run_backbone_is_the_loaded_runs_backbone(gpt2_run):
    model, _, _ = load_fpt_run(gpt2_run)
    backbone = load_backbone(f"run:{gpt2_run}")
    mine = dict(backbone.named_parameters())
    assert mine.keys() == dict(model.backbone.named_parameters()).keys()
    for name, param in model.backbone.named_parameters():
        assert torch.equal(mine[name], param), name
    assert all(p.requires_grad for p in mine.values())  # the new run's policy decides
    step = _metrics(gpt2_run)["best_step"]
    assert backbone.source.startswith(f"the backbone of run {gpt2_run} (task bit-xor, backbone ")
    assert f"trained weights from best.safetensors, step {step}); position table" in backbone.source


def test_forward_with_attentions_matches_forward_on_padded_examples(
    tiny_tensor, tmp_path, tiny_gpt2
):
    run = tmp_path / "ragged"
    args = ("--task", tiny_tensor, "--task-arg", "ragged=true", "--backbone", tiny_gpt2)
    cli_train(run, *args, "--attn-implementation", "eager", *FP32)
    model, task, _ = load_fpt_run(run)
    batch = task.split("test")[:8]
    assert (batch.mask == 0).any()
    with torch.inference_mode():
        logits, maps = model.forward_with_attentions(batch.x, batch.mask)
        torch.testing.assert_close(logits, model(batch.x, batch.mask))
    assert maps.shape == (8, 2, 2, 6, 6)  # (B, layers, heads, T, T)
    real = batch.mask.bool()[:, None, None, None, :]  # over keys
    torch.testing.assert_close(maps.masked_fill(~real, 0).sum(-1), torch.ones(8, 2, 2, 6))
    assert float(maps.masked_fill(real, 0).abs().max()) == 0.0  # padding never attended to


# --- unicomp fpt attention ----------------------------------------------------------------------
def _check_picture(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0  # not blank


def test_attention_gpt2_writes_the_picture_and_the_maps(gpt2_run, capsys):
    assert main(["fpt", "attention", str(gpt2_run), "--example", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    png, npz = gpt2_run / "attention-test-2.png", gpt2_run / "attention-test-2.npz"
    assert result["picture"] == str(png) and result["maps"] == str(npz)
    _check_picture(png)
    data = np.load(npz)
    maps = data["maps"]
    assert maps.shape == (2, 2, 10, 10) and maps.dtype == np.float32  # layers, heads, T, T
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)  # every key is real
    assert float(np.triu(maps, k=1).max()) == 0.0  # GPT-2 is causal: no later keys
    model, task, _ = load_fpt_run(gpt2_run)
    example = task.split("test")[2:3]
    with torch.inference_mode():
        logits = model(example.x, example.mask)
    np.testing.assert_allclose(data["logits"], logits[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(data["prediction"], logits[0].argmax(-1).numpy())
    np.testing.assert_array_equal(data["target"], example.y[0].numpy())
    np.testing.assert_array_equal(data["inputs"], example.x[0].numpy())
    assert (str(data["run"]), str(data["split"]), int(data["example"])) == (
        str(gpt2_run),
        "test",
        2,
    )
    assert str(data["freeze"]) == "paper" and result["shape"] == [2, 2, 10, 10]
    assert result["prediction"] == "".join(map(str, data["prediction"]))
    assert yaml.safe_load((gpt2_run / "config.yaml").read_text())["attn_implementation"] == "sdpa"


def test_attention_bert_val_split_to_a_chosen_file(bert_run, tmp_path):
    out = tmp_path / "pictures" / "memory.png"
    args = ["fpt", "attention", str(bert_run), "--split", "val", "--example", "15"]
    assert main([*args, "--out", str(out)]) == 0
    _check_picture(out)
    maps = np.load(out.with_suffix(".npz"))["maps"]
    assert maps.shape == (2, 2, 12, 12)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert float(np.triu(maps, k=1).max()) > 0  # an encoder: later keys too
    assert not (bert_run / "attention-val-15.png").exists()


def test_attention_over_real_keys_of_a_padded_example(tiny_tensor, tmp_path, tiny_bert, capsys):
    run = tmp_path / "ragged-bert"
    args = ("--task", tiny_tensor, "--task-arg", "ragged=true", "--backbone", tiny_bert)
    cli_train(run, *args, "--freeze", "output-only", "--feature-cache", "memory", *FP32)
    model, task, _ = load_fpt_run(run)
    masks = task.split("test").mask
    index = int((masks.sum(1) < 6).nonzero()[0])  # a padded example
    assert main(["fpt", "attention", str(run), "--example", str(index)]) == 0
    data = np.load(run / f"attention-test-{index}.npz")
    maps, mask = data["maps"], data["mask"].astype(bool)
    assert maps.shape == (2, 2, 6, 6) and not mask.all()
    np.testing.assert_allclose(maps[..., mask, :][..., mask].sum(-1), 1.0, atol=1e-5)
    assert float(maps[..., ~mask].max()) == 0.0
    _check_picture(run / f"attention-test-{index}.png")


def test_token_labels():
    memory = BitMemory(n_strings=2, n_bits=8, bits_per_token=2, n_val=4, n_test=4)
    x = memory.split("test").x[0].numpy()  # (12, 2) of +1 / -1, masked query bits 0
    labels = token_labels(memory, x, 12)
    assert len(labels) == 12 and all(len(s) == 2 and set(s) <= set("10?") for s in labels)
    assert labels[0] == "".join("1" if v > 0 else "0" for v in x[0])
    assert token_labels(memory, x, 65) is None  # too many tokens to label
    assert token_labels(memory, np.random.rand(4, 3).astype(np.float32), 4) is None
    ids = np.array([3, 1, 2])
    assert token_labels(memory, ids, 3) == ["3", "1", "2"]
    memory.vocab = ("<pad>", "a", "b", "c")
    assert token_labels(memory, ids, 3) == ["c", "a", "b"]


# --- errors -------------------------------------------------------------------------------------
def test_load_errors(tmp_path, gpt2_run, monkeypatch):
    with pytest.raises(UnicompError, match=r"^run folder .*nowhere does not exist$"):
        load_fpt_run(tmp_path / "nowhere")
    no_metrics = tmp_path / "no-metrics"
    shutil.copytree(gpt2_run, no_metrics)
    (no_metrics / "metrics.json").unlink()
    with pytest.raises(UnicompError, match=r"has no metrics.json \(the run has not finished"):
        load_fpt_run(no_metrics)
    load_backbone(f"run:{no_metrics}")  # run: backbones only need best.safetensors
    no_best = tmp_path / "no-best"
    shutil.copytree(gpt2_run, no_best)
    (no_best / "best.safetensors").unlink()
    with pytest.raises(UnicompError, match="has no best.safetensors"):
        load_fpt_run(no_best)
    mean = tmp_path / "mean"
    shutil.copytree(gpt2_run, mean)
    config = yaml.safe_load((mean / "config.yaml").read_text())
    (mean / "config.yaml").write_text(yaml.safe_dump({**config, "readout": "mean"}))
    monkeypatch.setattr(
        experiments, "_RUN_FIELDS_HANDLED", experiments._RUN_FIELDS_HANDLED - {"readout"}
    )
    with pytest.raises(UnicompError, match="sets readout, which rebuilding a run's model"):
        load_fpt_run(mean)


def test_attention_errors(tmp_path, gpt2_run, capsys):
    def fails(*args: str) -> str:
        assert main(["fpt", "attention", *args]) == 2
        return _one_error(capsys)

    assert fails(str(tmp_path / "nowhere")).endswith("nowhere does not exist")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(gpt2_run, unfinished)
    (unfinished / "metrics.json").unlink()
    assert "has no metrics.json (the run has not finished" in fails(str(unfinished))
    (unfinished / "best.safetensors").unlink()
    assert "has no best.safetensors" in fails(str(unfinished))
    dt = tmp_path / "dt"
    dt.mkdir()
    (dt / "config.yaml").write_text(yaml.safe_dump({"data": "d", "algo": "dt", "n_layer": 3}))
    shutil.copy(gpt2_run / "best.safetensors", dt / "best.safetensors")
    shutil.copy(gpt2_run / "metrics.json", dt / "metrics.json")
    assert "is not an FPT run (it is a Decision Transformer" in fails(str(dt))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.yaml (not a unicomp run folder)" in fails(str(empty))
    for bad in ("256", "-1"):
        error = fails(str(gpt2_run), "--example", bad)
        assert f"--example {bad}: the test split has 256 examples; choose 0 to 255" in error
    assert "expected a .png file" in fails(str(gpt2_run), "--out", str(tmp_path / "x.npz"))
    assert not list(gpt2_run.glob("attention-test-256*")) and not (tmp_path / "x.npz").exists()
    lstm = tmp_path / "lstm"
    cli_train(lstm, "--backbone", "lstm:1x8", "--freeze", "full", *FP32)
    assert "backbone lstm:1x8 (model_type lstm) has no attention layers" in fails(str(lstm))
