"""Run folders back into models from Python (issue 15, point 4; issue 16: every family through
``unicomp.experiments.load_run``): a Perceiver run through
``load_perceiver_run`` scores its recorded test metric again, and an FPT run on a
``random:`` backbone refuses to load when its frozen weights can no longer be re-created."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import cli_train, small_train
from unicomp.errors import UnicompError
from unicomp.experiments.fpt import load_fpt_run
from unicomp.experiments.perceiver import load_perceiver_run, run_perceiver
from unicomp.train import evaluate


def test_perceiver_run_loads_and_reproduces_its_test_accuracy(tmp_path):
    from unicomp.config import PerceiverConfig

    out = tmp_path / "perceiver"
    cfg = PerceiverConfig(
        task="bit-xor",
        num_latents=4,
        d_latent=16,
        num_blocks=1,
        self_attends_per_block=1,
        num_heads=2,
        out=str(out),
        train=small_train(steps=30, eval_every=10, lr=3e-3),
    )
    metrics = run_perceiver(cfg)
    model, task, loaded = load_perceiver_run(out)
    assert not model.training and loaded.num_latents == 4
    test = evaluate(model, task, task.split("test"), loaded.train, torch.device("cpu"))
    assert test["accuracy"] == metrics["test_accuracy"]
    assert test["loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    params = dict(model.named_parameters())
    for name, tensor in load_file(str(out / "best.safetensors")).items():
        assert torch.equal(params[name], tensor), name
    # a model with other weights would score differently: the check above can fail
    with torch.no_grad():
        for param in params.values():
            param.mul_(1.5)
    other = evaluate(model, task, task.split("test"), loaded.train, torch.device("cpu"))
    assert other["loss"] != pytest.approx(metrics["test_loss"], abs=1e-5)


def test_load_perceiver_run_refuses_other_folders(tmp_path):
    with pytest.raises(UnicompError, match="not a run folder"):
        load_perceiver_run(tmp_path)
    (tmp_path / "config.yaml").write_text("task: bit-xor\nbackbone: minilm-l6\nfreeze: paper\n")
    with pytest.raises(UnicompError, match="not a Perceiver run"):
        load_perceiver_run(tmp_path)


def test_random_backbone_run_checks_its_frozen_weights(tmp_path, tiny_gpt2):
    """A random: run records the SHA-256 of its frozen weights; rebuilt with the same init
    it loads and scores as recorded, rebuilt with another init it is refused."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_gpt2, folder)
    run = tmp_path / "run"
    args = ("--task", "bit-xor", "--backbone", f"random:{folder}", "--precision", "fp32")
    metrics = cli_train(run, *args)
    assert len(metrics["frozen_weights_sha256"]) == 64
    model, task, cfg = load_fpt_run(run)
    test = evaluate(model, task, task.split("test"), cfg.train, torch.device("cpu"))
    assert test["loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    # another init recipe (as a transformers release could bring) gives other random weights
    config = json.loads((folder / "config.json").read_text())
    config["initializer_range"] = 0.05
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnicompError, match="frozen weights rebuilt now") as err:
        load_fpt_run(run)
    assert "\n" not in str(err.value) and f"random:{folder}" in str(err.value)


# --- unicomp.experiments.load_run: every family's run folder back into its model -----------------
def test_load_run_gives_back_an_fpt_that_scores_its_recorded_test_metrics(tmp_path, tiny_gpt2):
    from unicomp.experiments import load_run, run_kind

    for freeze in ("paper", "output-only"):  # output-only: trained on cached features
        out = tmp_path / freeze
        metrics = cli_train(out, "--task", "bit-xor", "--backbone", tiny_gpt2, "--freeze", freeze)
        assert run_kind(out) == "fpt"
        run = load_run(out)
        assert run.kind == "fpt" and run.folder == out and run.metrics == metrics
        model, task, cfg = run.model, run.task, run.config
        assert not model.training and cfg.freeze == freeze
        test = evaluate(model, task, task.split("test"), cfg.train, torch.device("cpu"))
        assert test["accuracy"] == metrics["test_accuracy"], freeze
        assert test["loss"] == pytest.approx(metrics["test_loss"], abs=1e-5), freeze


def test_load_run_gives_back_a_perceiver(tmp_path):
    from unicomp.config import PerceiverConfig
    from unicomp.experiments import load_run, run_kind

    out = tmp_path / "perceiver"
    cfg = PerceiverConfig(
        task="bit-xor", num_latents=4, d_latent=16, num_blocks=1, self_attends_per_block=1,
        num_heads=2, out=str(out), train=small_train(steps=6, eval_every=3),
    )  # fmt: skip
    metrics = run_perceiver(cfg)
    assert run_kind(out) == "perceiver"
    run = load_run(out)
    model, task, loaded = run.model, run.task, run.config
    assert run.kind == "perceiver" and loaded.num_latents == 4
    test = evaluate(model, task, task.split("test"), loaded.train, torch.device("cpu"))
    assert test["accuracy"] == metrics["test_accuracy"]


def test_load_run_gives_back_a_decision_transformer_that_acts_and_scores_as_recorded(tmp_path):
    from unicomp.cli import main
    from unicomp.experiments import load_run, run_kind
    from unicomp.experiments.dt import EvalSettings, act, build_dt_task

    data = tmp_path / "data"
    argv = ["dt", "collect", "--env", "Pendulum-v1", "--policy", "random", "--episodes", "6"]
    assert main([*argv, "--out", str(data), "--max-episode-steps", "15", "--n-envs", "2"]) == 0
    out = tmp_path / "dt"
    argv = ["dt", "train", "--data", str(data), "--out", str(out), "--steps", "4"]
    argv += ["--eval-every", "2", "--batch-size", "4", "--context", "4", "--hidden-size", "16"]
    argv += ["--n-layer", "1", "--val-fraction", "0.2", "--test-fraction", "0.2"]
    argv += ["--eval-episodes", "2", "--eval-targets", "-100", "--no-progress"]
    assert main(argv) == 0
    recorded = json.loads((out / "metrics.json").read_text())
    assert run_kind(out) == "dt"
    run = load_run(out)
    model, cfg, metrics = run.model, run.config, run.metrics
    assert run.kind == "dt" and run.task is None
    assert metrics == recorded and not model.training
    # the held-out episodes' action loss, as the run measured it with its best weights
    task = build_dt_task(cfg)
    test = evaluate(model, task, task.split("test"), cfg.train, torch.device("cpu"))
    assert test["loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    # and the same episodes (same seeds) return what the run recorded
    assert EvalSettings.of(cfg) == EvalSettings(episodes=2, targets=(-100.0,))
    again = act(
        model, metrics["env"], [-100.0], metrics["normalization"], metrics["reference_scores"],
        EvalSettings.of(cfg), progress=False,
    )  # fmt: skip
    assert again[0]["return_mean"] == pytest.approx(metrics["return_mean"], rel=1e-5)


def test_load_run_refuses_a_folder_of_no_family(tmp_path):
    from unicomp.experiments import load_run

    with pytest.raises(UnicompError, match="no config.yaml"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("lr: 3\n")
    with pytest.raises(UnicompError, match="not the config of an FPT, Perceiver or Decision"):
        load_run(tmp_path)
