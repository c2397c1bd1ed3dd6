"""``unicomp export`` (issue 15, point 4): a DT run folder as a transformers
DecisionTransformerModel folder that ``from_pretrained`` loads and that predicts the actions
the run's model predicts; what it cannot represent is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import small_train
from tests.test_rl import _episodes

transformers = pytest.importorskip("transformers")
pytest.importorskip("minari")


def _dt_run(tmp_path, name: str, discrete: bool = False, **cfg):
    """A 3-step DT (2 layers, 2 heads, width 16, K=4) on generated episodes; its folder."""
    from unicomp.config import DTConfig
    from unicomp.experiments.dt import run_dt
    from unicomp.rl.minari_io import write_minari
    from unicomp.rl.trajectories import TrajectoryDataset

    act_dim = 4 if discrete else 2
    episodes = _episodes([9, 8, 10, 7, 9, 8], obs_dim=5, act_dim=act_dim, discrete=discrete)
    write_minari(TrajectoryDataset(episodes, source="test"), tmp_path / f"{name}-data")
    fields = dict(context=4, hidden_size=16, n_layer=2, n_head=2, max_ep_len=50, eval_episodes=0)
    config = DTConfig(
        data=str(tmp_path / f"{name}-data"),
        out=str(tmp_path / name),
        train=small_train(steps=3, eval_every=3, warmup_steps=0),
        **{**fields, **cfg},
    )
    run_dt(config)
    return tmp_path / name


def _same_actions(run, out, seed: int):
    """(ours, transformers') actions on random inputs and on the run's validation windows."""
    from unicomp.experiments.dt import load_dt_run
    from unicomp.tools.export import example_inputs, predicted_actions

    model, _, _ = load_dt_run(run)
    hf_model = transformers.DecisionTransformerModel.from_pretrained(out)
    pairs = [predicted_actions(model, hf_model, example_inputs(model.config, 5, seed))]
    from unicomp.rl.dt_task import DTTask

    task = DTTask(str(run.parent / f"{run.name}-data"), context=4, max_ep_len=50)
    val = task.split("val")
    real = {**val.x, "attention_mask": val.mask.long()}
    pairs.append(predicted_actions(model, hf_model, real))
    return model, hf_model, pairs


def test_exported_dt_loads_in_transformers_and_predicts_the_same_actions(tmp_path):
    run = _dt_run(tmp_path, "run")
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "unicomp.cli", "export", str(run), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] == ["README.md", "config.json", "model.safetensors"]
    model, hf_model, pairs = _same_actions(run, out, seed=1)
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and ours.shape[-1] == 2
        assert ours.std() > 1e-3  # not a constant: the comparison below can fail
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # the comparison is sharp: a wrong timestep row changes the actions
    with torch.no_grad():
        hf_model.embed_timestep.weight[:] = hf_model.embed_timestep.weight.roll(1, 0)
    from unicomp.tools.export import example_inputs, predicted_actions

    ours, theirs = predicted_actions(model, hf_model, example_inputs(model.config, 5, 1))
    assert not torch.allclose(ours, theirs, atol=1e-3)
    config = json.loads((out / "config.json").read_text())
    assert config["action_tanh"] is True and config["n_layer"] == 2 and config["n_head"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["unicomp"]["state_mean"] == metrics["normalization"]["state_mean"]
    assert "state_mean" in (out / "README.md").read_text()


def test_discrete_dt_exports_logits(tmp_path, capsys):
    from unicomp.cli import main

    run = _dt_run(tmp_path, "ktd", discrete=True)
    assert main(["export", str(run), "-o", str(tmp_path / "hf")]) == 0
    _, _, pairs = _same_actions(run, tmp_path / "hf", seed=2)
    for ours, theirs in pairs:
        assert ours.shape[-1] == 4 and (ours.abs() > 1).any()  # logits, not tanh outputs
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["action_tanh"] is False


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    from unicomp.cli import main

    bc = _dt_run(tmp_path, "bc", algo="bc")
    assert main(["export", str(bc), "-o", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "reads no returns-to-go" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()
    fpt = tmp_path / "fpt"
    fpt.mkdir()
    (fpt / "config.yaml").write_text("task: bit-xor\nbackbone: minilm-l6\nfreeze: paper\n")
    assert main(["export", str(fpt), "-o", str(tmp_path / "hf")]) == 2
    assert "unicomp.experiments.load_run" in capsys.readouterr().err
    dt = _dt_run(tmp_path, "dt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(dt), "-o", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_export_refuses_backbone_and_image_dts(tmp_path, tiny_gpt2):
    from unicomp.errors import UnicompError
    from unicomp.models.decision_transformer import build_decision_transformer
    from unicomp.tools.export import _refuse_unless_exportable

    backbone = build_decision_transformer(5, 2, backbone=f"random:{tiny_gpt2}", max_length=4)
    with pytest.raises(UnicompError, match="pretrained backbone 'random:"):
        _refuse_unless_exportable(backbone, tmp_path)
    atari = build_decision_transformer(0, 4, discrete=True, image_shape=(4, 84, 84), n_layer=1)
    with pytest.raises(UnicompError, match="states are images"):
        _refuse_unless_exportable(atari, tmp_path)
