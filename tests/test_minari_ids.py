"""Minari data sets by id (issue 15, point 2): ``dt train --data <id>`` reads them through
``minari.load_dataset`` from ``$MINARI_DATASETS_PATH``, scores with their own reference
returns, and keeps the environment spec of a user's environment; our writer uses Minari's
public API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

minari = pytest.importorskip("minari")
gym = pytest.importorskip("gymnasium")

REF = (-1500.0, -150.0)  # random and "expert" returns written into the data set's metadata

# A user's environment in a module of their own: ``--env mymod:MyEnv-v0`` imports it.
MYMOD = """
import gymnasium as gym
import numpy as np


class MyEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(2, self.t / 10, np.float32)
        return obs, float(action[0]), False, self.t >= 6, {}


gym.register("MyEnv-v0", entry_point="mymod:MyEnv")
"""


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    return run_cli(*args, env=env, cwd=cwd, timeout=300)


def _pendulum_buffers(episodes: int = 5, steps: int = 12):
    """Random-action Pendulum episodes as Minari's EpisodeBuffers (what a user would build)."""
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Pendulum-v1", max_episode_steps=steps)
    rng = np.random.default_rng(0)
    buffers = []
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        o, a, r, term, trunc = [obs], [], [], [], []
        done = False
        while not done:
            action = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
            obs, reward, te, tr, _ = env.step(action)
            o.append(obs), a.append(action), r.append(reward), term.append(te), trunc.append(tr)
            done = te or tr
        buffers.append(
            EpisodeBuffer(
                observations=np.array(o),
                actions=np.array(a),
                rewards=np.array(r),
                terminations=np.array(term),
                truncations=np.array(trunc),
            )
        )
    env.close()
    return buffers


TINY = ["--steps", "3", "--batch-size", "4", "--eval-every", "3", "--device", "cpu"]
TINY += ["--n-layer", "1", "--hidden-size", "16", "--context", "4", "--no-progress"]
TINY += ["--precision", "fp32", "--warmup-steps", "0"]


def test_dt_train_on_a_minari_id_scores_with_its_reference_returns(tmp_path):
    root = tmp_path / "minari-root"
    os.environ["MINARI_DATASETS_PATH"] = str(root)  # where minari's writer puts it
    try:
        minari.create_dataset_from_buffers(
            "test/pendulum/tiny-v0",
            _pendulum_buffers(),
            env="Pendulum-v1",
            algorithm_name="random",
            author="unicomp tests",
            author_email="none",
            code_permalink="none",
            description="five random Pendulum episodes of 12 steps",
            eval_env="Pendulum-v1",
            ref_min_score=REF[0],
            ref_max_score=REF[1],
        )
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    out = tmp_path / "run"
    args = ["dt", "train", "--data", "test/pendulum/tiny-v0", "--out", str(out), *TINY]
    args += ["--eval-episodes", "2", "--eval-max-steps", "10", "--eval-targets", "-200"]
    proc = _cli(*args, env={"MINARI_DATASETS_PATH": str(root)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["env"] == "Pendulum-v1" and metrics["steps"] == 3
    ref = metrics["reference_scores"]
    assert (ref["ref_min_score"], ref["ref_max_score"]) == REF
    assert ref["source"] == "data set metadata (ref_min_score, ref_max_score)"
    # Pendulum has no entry in our table: the score exists only through the metadata
    (e,) = metrics["eval"]
    assert e["episodes"] == 2
    expected = 100 * (e["return_mean"] - REF[0]) / (REF[1] - REF[0])
    assert e["normalized_score_mean"] == pytest.approx(expected)
    assert metrics["normalized_score_mean"] == pytest.approx(expected)
    assert json.loads(proc.stdout.split("run folder:")[0])["eval"][0]["normalized_score_mean"] == (
        pytest.approx(expected)
    )
    # and as minari itself computes it
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        ds = minari.load_dataset("test/pendulum/tiny-v0")
        ours = minari.get_normalized_score(ds, np.array([e["return_mean"]]))
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    assert 100 * float(ours[0]) == pytest.approx(expected, rel=1e-5)


def test_a_minari_id_not_downloaded_is_a_one_line_error(tmp_path):
    proc = _cli(
        "dt", "train", "--data", "mujoco/hopper/medium-v0", *TINY,
        env={"MINARI_DATASETS_PATH": str(tmp_path / "empty")},
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "no Minari data set 'mujoco/hopper/medium-v0'" in err
    assert f"MINARI_DATASETS_PATH={tmp_path / 'empty'}" in err
    assert "minari download mujoco/hopper/medium-v0" in err
    # a missing folder that does not look like an id is named as what it could have been
    proc = _cli("dt", "train", "--data", "no/such/folder", *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and "or a Minari data set id" in proc.stderr


def test_written_data_set_is_minaris_own_format(tmp_path, monkeypatch):
    """What ``dt collect`` writes (through minari.create_dataset_from_buffers) loads with
    minari.load_dataset once under MINARI_DATASETS_PATH, with the reference scores and env
    spec, and leaves MINARI_DATASETS_PATH as it was."""
    from tests.test_rl import _episodes
    from unicomp.rl.minari_io import write_minari
    from unicomp.rl.trajectories import TrajectoryDataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "elsewhere"))
    ds = TrajectoryDataset(_episodes([3, 4, 5]), env_id="Hopper-v5", source="test")
    data = write_minari(ds, tmp_path / "set", dataset_id="test/hopper/set-v0", ref_scores=REF)
    assert os.environ["MINARI_DATASETS_PATH"] == str(tmp_path / "elsewhere")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["data"]  # no temporary left
    target = tmp_path / "elsewhere" / "test" / "hopper" / "set-v0"
    target.mkdir(parents=True)
    data.rename(target / "data")
    loaded = minari.load_dataset("test/hopper/set-v0")
    assert loaded.total_episodes == 3 and loaded.env_spec.id == "Hopper-v5"
    assert minari.get_normalized_score(loaded, np.array([REF[1]])).tolist() == [1.0]


def test_user_environment_keeps_its_spec(tmp_path):
    """A data set collected in ``mymod:MyEnv-v0`` names its environment, and training and a
    later ``dt eval`` (fresh processes that never import mymod themselves) act in it."""
    (tmp_path / "mymod.py").write_text(MYMOD)
    env = {"PYTHONPATH": str(tmp_path)}
    proc = _cli(
        "dt", "collect", "--env", "mymod:MyEnv-v0", "--policy", "random", "--episodes", "4",
        "--n-envs", "2", "--out", "data", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "data" / "data" / "metadata.json").read_text())
    spec = json.loads(meta["env_spec"])
    assert (spec["id"], spec["entry_point"]) == ("MyEnv-v0", "mymod:MyEnv")
    args = ["dt", "train", "--data", "data", "--out", "run", *TINY, "--eval-episodes", "2"]
    proc = _cli(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["env"] == "MyEnv-v0" and metrics["eval"][0]["episodes"] == 2
    assert metrics["eval"][0]["length_mean"] == 6  # MyEnv's episodes: 6 steps
    assert metrics["reference_scores"] is None and metrics["normalized_score_mean"] is None
    proc = _cli("dt", "eval", "--run", "run", "--eval-episodes", "2", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["env"] == "MyEnv-v0"


def test_an_environment_module_that_cannot_be_imported_is_one_line():
    """``module:Env-v0`` whose module is missing is an error naming it, not a data set
    written without its environment's spec."""
    from unicomp.errors import UnicompError
    from unicomp.rl.envs import env_spec_of

    with pytest.raises(UnicompError, match="cannot import its module 'no_such_env_module'"):
        env_spec_of("no_such_env_module:MyEnv-v0")
