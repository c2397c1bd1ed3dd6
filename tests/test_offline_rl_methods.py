"""Offline-RL methods behind one interface (unicomp.experiments.offline_rl): a method defined
here, registered with one line, trains through ``unicomp dt train`` and loads back, names
and labels its runs, without a change to any other file; the built-in methods keep their
run folder names and comparison labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from unicomp.config import DTConfig
from unicomp.experiments.offline_rl import OfflineRLMethod, offline_rl_method, run_label
from unicomp.registry import OFFLINE_RL_METHODS

pytest.importorskip("minari")


class LinearPolicy(nn.Module):
    """A linear map from each step's state to its action, with the DT's acting interface."""

    def __init__(self, state_dim: int, act_dim: int):
        super().__init__()
        self.linear = nn.Linear(state_dim, act_dim)

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None):
        return self.linear(x["states"])

    def start(self, batch_size: int, window: str = "exact") -> None:
        return None

    def step(self, rollout, returns_to_go, state: torch.Tensor, timestep) -> torch.Tensor:
        return self.linear(state)

    def record_action(self, rollout, action: torch.Tensor) -> None:
        pass


class LinearBC(OfflineRLMethod):
    """A toy method: behaviour cloning by a linear policy."""

    name = "linear-bc"

    def build_policy(self, cfg: DTConfig, task) -> nn.Module:
        return LinearPolicy(int(task.dataset.obs_shape[0]), task.act_dim)

    def policy_name(self, cfg: DTConfig) -> str:
        return "linear"

    def policy_spec(self, model: nn.Module) -> dict:
        return {"kind": "linear", "shape": list(model.linear.weight.shape)}

    def rebuild_policy(self, spec: dict) -> nn.Module:
        act_dim, state_dim = spec["shape"]
        return LinearPolicy(state_dim, act_dim)

    def label(self, metrics: dict) -> str:
        return "linear BC"


@pytest.fixture
def registered(monkeypatch):
    """LinearBC registered for this test only (the registry's one line)."""
    OFFLINE_RL_METHODS.names()  # the catalogue first, then a copy this test may change
    monkeypatch.setattr(OFFLINE_RL_METHODS, "_entries", dict(OFFLINE_RL_METHODS._entries))
    OFFLINE_RL_METHODS.register("linear-bc", LinearBC(), "behaviour cloning, linear")


def _episodes(folder) -> None:
    """A tiny generated data set: 6 episodes of 8 steps, 3-d states, 2-d actions."""
    from unicomp.rl.minari_io import write_minari
    from unicomp.rl.trajectories import Episode, TrajectoryDataset

    rng = np.random.default_rng(0)
    eps = [
        Episode(
            rng.normal(size=(9, 3)).astype(np.float32),
            rng.uniform(-1, 1, size=(8, 2)).astype(np.float32),
            np.full(8, i / 8.0),
            np.zeros(8, bool),
            np.eye(8, dtype=bool)[-1],
        )
        for i in range(6)
    ]
    write_minari(TrajectoryDataset(eps, env_id="Hopper-v5", source="test"), folder)


def test_a_method_defined_outside_trains_through_dt_train_and_loads_back(
    registered, tmp_path, monkeypatch, capsys
):
    from unicomp.cli import main
    from unicomp.experiments import load_run

    monkeypatch.chdir(tmp_path)
    _episodes(tmp_path / "toy-data")
    argv = ["dt", "train", "--algo", "linear-bc", "--data", "toy-data", "--steps", "2"]
    argv += ["--eval-every", "1", "--batch-size", "4", "--context", "4", "--no-progress"]
    argv += ["--val-fraction", "0.2", "--test-fraction", "0.2", "--eval-episodes", "0"]
    assert main(argv) == 0
    out = tmp_path / "runs" / "linear-bc-toy-data-s0"  # the method's part of the name
    assert f"run folder: {out.relative_to(tmp_path)}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == "linear-bc" and metrics["policy"] == "linear"
    assert metrics["steps"] == 2 and np.isfinite(metrics["test_loss"])
    assert metrics["model_config"] == {"kind": "linear", "shape": [2, 3]}
    assert run_label(metrics) == "linear BC"
    run = load_run(out)
    assert run.kind == "dt" and isinstance(run.model, LinearPolicy)
    assert run.config.algo == "linear-bc" and not run.model.training


def test_an_unregistered_method_is_refused_naming_the_registered_ones(capsys):
    from unicomp.cli import main

    with pytest.raises(SystemExit):
        main(["dt", "train", "--algo", "linear-bc", "--data", "d"])
    err = capsys.readouterr().err
    assert "invalid choice: 'linear-bc'" in err and "'dt', 'bc', 'pbc'" in err


def test_builtin_methods_name_and_label_their_runs_as_before():
    def folder(**fields) -> str:
        cfg = DTConfig(data="data/a,data/b", **fields)
        return offline_rl_method(cfg.algo).folder_name(cfg)

    assert folder() == "dt" and folder(algo="bc") == "bc"
    assert folder(algo="pbc", top_percent=10.0) == "pbc10"
    assert folder(algo="bc", policy="mlp") == "bc-mlp"
    assert run_label({"algo": "dt", "context": 1, "delayed_reward": True}) == "DT K=1 delayed"
    assert run_label({"algo": "pbc", "top_percent": 25, "policy": "mlp"}) == "%BC 25% (mlp)"
    assert run_label({"algo": "bc"}) == "BC (dt-noreturn)"
    assert run_label({"algo": "cql"}) == "CQL" and run_label({"algo": "sac"}) == "SAC"
    assert not offline_rl_method("bc").reads_returns and offline_rl_method("dt").reads_returns
    # the loop trains these; d3rlpy's are adapters, trained by dt external
    assert list(DTConfig.__dataclass_fields__["algo"].metadata["choices"]) == ["dt", "bc", "pbc"]
