"""The DT's defaults on a user's own runs and data, driven through `unicomp dt train`: a
warm-up that scales with the run, default targets right for returns of any sign, several
data sets trained on together, and a Minari id of its own for each collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("gymnasium")
pytest.importorskip("minari")

from unicomp.cli import main  # noqa: E402
from unicomp.rl.collect import Component, collect  # noqa: E402
from unicomp.rl.evaluate import default_targets  # noqa: E402
from unicomp.rl.minari_io import read_minari, write_minari  # noqa: E402
from unicomp.rl.trajectories import Episode, TrajectoryDataset  # noqa: E402

REPO = Path(__file__).parents[1]
TINY = ["--batch-size", "8", "--eval-every", "5", "--no-progress", "--precision", "fp32"]
TINY += ["--hidden-size", "16", "--n-layer", "1", "--context", "4", "--device", "cpu"]
TINY += ["--val-fraction", "0.2", "--test-fraction", "0.2"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _pendulum(out: str, seed: int = 0) -> Path:
    """A random policy's Pendulum episodes, as `unicomp dt collect` writes them."""
    collect(
        "Pendulum-v1",
        [Component("random")],
        episodes=6,
        out=out,
        seed=seed,
        n_envs=2,
        max_episode_steps=15,
        progress=False,
        log=lambda *a: None,
    )
    return Path(out)


def _synthetic(out: str, obs_dim: int = 3, env_id: str | None = None, **kw) -> Path:
    rng = np.random.default_rng(obs_dim)
    episodes = []
    for T in (6, 7, 8, 6, 7):
        episodes.append(
            Episode(
                rng.normal(size=(T + 1, obs_dim)).astype(np.float32),
                rng.uniform(-1, 1, size=(T, 1)).astype(np.float32),
                rng.normal(size=T),
                np.zeros(T, bool),
                np.eye(1, T, T - 1, dtype=bool)[0],
            )
        )
    write_minari(TrajectoryDataset(episodes, env_id=env_id, source="test"), out, **kw)
    return Path(out)


def _train(*argv: str) -> dict:
    assert main(["dt", "train", *argv, *TINY]) == 0
    out = Path(argv[list(argv).index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


# --- the warm-up --------------------------------------------------------------------------------
def test_a_short_run_warms_up_for_the_papers_fraction_of_its_steps(capsys):
    data = _pendulum("pendulum")
    metrics = _train("--data", str(data), "--steps", "30", "--eval-episodes", "0", "--out", "r")
    saved = yaml.safe_load(Path("r/config.yaml").read_text())
    assert saved["train"]["warmup_steps"] == 3  # 10% of 30, as 10,000 of the paper's 100,000
    assert (metrics["warmup_steps"], metrics["warmup_fraction"]) == (3, 0.1)
    assert metrics["warnings"] == []  # no "the run ends inside the warm-up" any more
    curve = Path("r/curve.csv").read_text().splitlines()
    lr = float(curve[-1].split(",")[5])
    assert lr == pytest.approx(1e-4)  # the run reached its learning rate
    assert "inside the warm-up" not in capsys.readouterr().err

    # an explicit value wins, from a flag or from a config file
    metrics = _train("--data", str(data), "--steps", "30", "--warmup-steps", "0",
                     "--eval-episodes", "0", "--out", "r0")  # fmt: skip
    assert metrics["warmup_steps"] == 0
    paper = str(REPO / "configs" / "dt-gym-paper.yaml")
    metrics = _train("--config", paper, "--data", str(data), "--steps", "10",
                     "--eval-episodes", "0", "--out", "rp")  # fmt: skip
    assert metrics["warmup_steps"] == 10_000 and "inside the warm-up" in metrics["warnings"][0]

    # the defaults as `unicomp list --task dt` and --help state them: the paper's at its length
    assert main(["list", "--task", "dt"]) == 0
    assert "warmup_steps         10000" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["dt", "train", "--help"])
    assert "10% of --steps (10000 at 100000)" in " ".join(capsys.readouterr().out.split())


# --- default targets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "best, median, expected",
    [
        (-0.76, -233.0, (-0.76, -116.88)),  # Pendulum: every return negative
        (10.0, -5.0, (10.0, 2.5)),  # mixed signs
        (100.0, 0.0, (100.0, 50.0)),  # the old "half of the best" where the median is 0
        (4.0, 4.0, (4.0,)),  # every episode the same: one target
    ],
)
def test_default_targets_lie_within_the_datas_returns(best, median, expected):
    assert default_targets("Pendulum-v1", best, median) == pytest.approx(expected)
    assert default_targets(None, best, median) == pytest.approx(expected)
    assert all(median <= t <= best for t in default_targets(None, best, median))


def test_the_papers_environments_keep_the_papers_targets():
    assert default_targets("Hopper-v5", -5.0, -10.0) == (3600.0, 1800.0)
    assert default_targets("ALE/Breakout-v5", -1.0, -2.0) == (90.0,)


def test_dt_train_on_negative_returns_targets_inside_the_data():
    data = _pendulum("pendulum")
    returns = read_minari(data).returns()
    assert returns.max() < 0
    metrics = _train("--data", str(data), "--steps", "4", "--eval-episodes", "1",
                     "--eval-envs", "1", "--eval-max-steps", "3", "--out", "r")  # fmt: skip
    targets = [e["target_return"] for e in metrics["eval"]]
    assert targets == pytest.approx([returns.max(), (returns.max() + np.median(returns)) / 2])
    assert all(returns.min() <= t <= returns.max() for t in targets)
    assert metrics["data"]["return_median"] == pytest.approx(np.median(returns))


# --- several data sets ----------------------------------------------------------------------------
def test_two_collections_of_one_environment_get_their_own_ids_and_train_together(capsys):
    a, b = _pendulum("data/a", seed=0), _pendulum("data/b", seed=100)
    ids = [read_minari(p).metadata["dataset_id"] for p in (a, b)]
    assert ids[0] != ids[1] and all(i.startswith("unicomp/pendulum/custom-") for i in ids)
    assert [json.loads((p / "collection.json").read_text())["dataset_id"] for p in (a, b)] == ids
    # a data set written before the ids had a tag reads and combines as ever
    old = _synthetic("data/old", env_id="Pendulum-v1", dataset_id="unicomp/pendulum/custom-v0")
    assert read_minari(old).metadata["dataset_id"] == "unicomp/pendulum/custom-v0"

    assert main(["dt", "train", "--data", f"{a},{b},{old}", "--steps", "4",
                 "--eval-episodes", "0", *TINY]) == 0  # fmt: skip
    run = Path("runs/dt-a+b+old-s0")  # the default folder names every data set
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["episodes"] == 6 + 6 + 5
    sets = metrics["data_sets"]
    assert [s["data"] for s in sets] == [str(a), str(b), str(old)]
    assert [s["dataset_id"] for s in sets] == [*ids, "unicomp/pendulum/custom-v0"]
    assert [s["episodes"] for s in sets] == [6, 6, 5]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == f"{a},{b},{old}"


@pytest.mark.parametrize("command", [["dt", "train"], ["dt", "external", "--algo", "iql"]])
def test_a_second_data_flag_is_an_error_saying_how_to_combine(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--data", "data/a", "--data", "data/b"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--data" in err and "given more than once" in err and "--data A,B" in err


def test_data_sets_that_do_not_share_spaces_or_environment_are_one_line_errors(capsys):
    three, four = _synthetic("data/three", 3), _synthetic("data/four", 4)
    assert main(["dt", "train", "--data", f"{three},{four}", "--eval-episodes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "data/three and data/four differ in observation shape ((3,) against (4,))" in err

    pendulum = _synthetic("data/pendulum", 3, env_id="Pendulum-v1")
    assert main(["dt", "train", "--data", f"{pendulum},{three}", "--eval-episodes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "differ in environment (Pendulum-v1 against None)" in err
    assert main(["dt", "train", "--data", f"{three},", "--eval-episodes", "0"]) == 2
    assert "an empty name between commas" in capsys.readouterr().err


# --- the environment checked against the data before training ------------------------------------
@pytest.mark.parametrize(
    "data_kw, env, message",
    [
        ({}, "NoSuchEnv-v0", "unknown environment 'NoSuchEnv-v0'"),
        ({"obs_dim": 7}, "Pendulum-v1", "observations of shape (3,) in the environment, (7,) in"),
        ({"obs_dim": 4}, "CartPole-v1", "discrete actions in the environment, continuous in"),
        ({"act_dim": 4}, "Pendulum-v1", "1 action values in the environment, 4 in the data"),
    ],
)
def test_an_environment_that_does_not_fit_the_data_stops_before_training(
    capsys, data_kw, env, message
):
    obs_dim, act_dim = data_kw.get("obs_dim", 3), data_kw.get("act_dim", 1)
    rng = np.random.default_rng(0)
    episodes = [
        Episode(rng.normal(size=(T + 1, obs_dim)).astype(np.float32),
                rng.uniform(-1, 1, size=(T, act_dim)).astype(np.float32), rng.normal(size=T),
                np.zeros(T, bool), np.eye(1, T, T - 1, dtype=bool)[0])
        for T in (6, 7, 8, 6, 7)
    ]  # fmt: skip
    write_minari(TrajectoryDataset(episodes, env_id=None, source="test"), "data")
    argv = ["dt", "train", "--data", "data", "--env", env, "--steps", "3", "--out", "run", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not Path("run").exists()  # nothing trained, nothing to refuse on the re-run
