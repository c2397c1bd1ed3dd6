"""Atari for the Decision Transformer: the DQN Replay Dataset reader on files in the real
layout (gzipped np.save output, dopamine's padding rows and circular buffer), the ALE
environments with the paper's preprocessing, collection, and a tiny Atari DT that trains and
acts in a real ALE game."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from unicomp.errors import DataError, UnicompError

pytest.importorskip("ale_py")
pytest.importorskip("cv2")
pytest.importorskip("minari")

from unicomp.rl.atari import ATARI_REF_SCORES, ATARI_TARGETS, atari_env_id, parse_ranges
from unicomp.rl.dqn_replay import read_dqn_replay

H = W = 84


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# --- DQN replay files ------------------------------------------------------------------------
def _gz_npy(path: Path, array: np.ndarray, allow_pickle: bool = False) -> None:
    """What dopamine's OutOfGraphReplayBuffer.save writes: np.save into a GzipFile."""
    with gzip.open(path, "wb") as f:
        np.save(f, array, allow_pickle=allow_pickle)


class Buffer:
    """A replay buffer filled as dopamine's ``add`` fills it: stack - 1 = 3 padding rows (blank
    frame, action 0, reward 0) before each episode, one row per step after."""

    def __init__(self):
        self.frames, self.actions, self.rewards, self.terminals = [], [], [], []
        self.next_value = 1  # frame i's first pixel holds a distinct value (never blank)
        self.rng = np.random.default_rng(1)  # noise, so that the rows dominate the .gz size

    def _row(self, frame, action, reward, terminal):
        self.frames.append(frame)
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminals.append(terminal)

    def steps(self, n: int, end: bool, pad: bool = True) -> list[int]:
        """An episode's ``n`` steps (padding first unless ``pad`` is False); returns their
        frame values."""
        if pad:
            for _ in range(3):
                self._row(np.zeros((H, W), np.uint8), 0, 0.0, 0)
        values = []
        for t in range(n):
            v = self.next_value
            self.next_value = self.next_value % 250 + 1
            values.append(v)
            frame = self.rng.integers(1, 256, (H, W), dtype=np.uint8)
            frame[0, 0] = v
            self._row(frame, 1 + t % 3, float(t % 2), int(end and t == n - 1))
        return values

    def write(self, logs: Path, suffix: int, capacity: int, add_count: int | None, roll: int = 0):
        """Save as checkpoint ``suffix``: rows in a buffer of ``capacity`` (unused rows hold
        whatever np.empty left: here a constant), rotated by ``roll`` (where the circular
        buffer put them)."""
        n = len(self.frames)
        assert n <= capacity
        obs = np.full((capacity, H, W), 7, np.uint8)
        obs[:n] = np.stack(self.frames)
        cols = {
            "action": np.zeros(capacity, np.int32),
            "reward": np.zeros(capacity, np.float32),
            "terminal": np.zeros(capacity, np.uint8),
        }
        cols["action"][:n], cols["reward"][:n] = self.actions, self.rewards
        cols["terminal"][:n] = self.terminals
        logs.mkdir(parents=True, exist_ok=True)
        _gz_npy(logs / f"$store$_observation_ckpt.{suffix}.gz", np.roll(obs, roll, axis=0))
        for name, values in cols.items():
            _gz_npy(logs / f"$store$_{name}_ckpt.{suffix}.gz", np.roll(values, roll))
        if add_count is not None:
            _gz_npy(logs / f"add_count_ckpt.{suffix}.gz", np.array(add_count))
        _gz_npy(logs / f"invalid_range_ckpt.{suffix}.gz", np.zeros(4, np.int64))


def _first_checkpoint(logs: Path, suffix: int = 0):
    """A buffer that has not wrapped: two whole episodes, then one still running."""
    b = Buffer()
    a = b.steps(5, end=True)
    c = b.steps(6, end=True)
    b.steps(4, end=False)
    b.write(logs, suffix, capacity=40, add_count=len(b.frames))
    return a, c


def test_reader_splits_episodes_drops_padding_and_stacks_frames(tmp_path):
    logs = tmp_path / "Breakout" / "1" / "replay_logs"
    a, c = _first_checkpoint(logs)
    ds = read_dqn_replay(logs.parent, n_actions=4)  # the run folder above replay_logs
    assert [len(e) for e in ds.episodes] == [5, 6]  # the running episode is left out
    e = ds.episodes[0]
    assert e.observations.shape == (5, 4, H, W) and e.observations.dtype == np.uint8
    first = e.observations[:, :, 0, 0]  # one pixel of each stacked frame
    assert first[0].tolist() == [0, 0, 0, a[0]]  # zeros before the first frame, as dopamine
    assert first[2].tolist() == [0, a[0], a[1], a[2]]
    assert first[4].tolist() == a[1:5]
    assert e.actions.tolist() == [1, 2, 3, 1, 2] and e.rewards.tolist() == [0, 1, 0, 1, 0]
    assert e.terminations.tolist() == [False] * 4 + [True] and not e.truncations.any()
    assert ds.episodes[1].observations[0, :, 0, 0].tolist() == [0, 0, 0, c[0]]
    assert ds.discrete and ds.action_dim == 4


def test_reader_on_a_wrapped_circular_buffer(tmp_path):
    """A logged checkpoint k > 0: add_count = k * capacity + capacity - 1, the newest row just
    before the cursor (capacity - 1), the oldest at it. The episode that began in the previous
    checkpoint and the one still running are partial: only the whole one in between is read."""
    logs = tmp_path / "replay_logs"
    b = Buffer()
    b.steps(4, end=True, pad=False)  # began before this buffer: partial
    whole = b.steps(5, end=True)
    b.steps(3, end=False)  # still running
    capacity = len(b.frames) + 1
    # chronological rows 0..n-1 land at buffer rows capacity-1, 0, 1, ...: roll by -1
    b.write(logs, 3, capacity, add_count=2 * capacity + capacity - 1, roll=-1)
    ds = read_dqn_replay(logs)
    assert [len(e) for e in ds.episodes] == [5]
    assert ds.episodes[0].observations[:, -1, 0, 0].tolist() == whole


def test_reader_without_add_count_keeps_row_0_only_at_an_episode_start(tmp_path):
    logs = tmp_path / "replay_logs"
    b = Buffer()
    b.steps(4, end=True)  # padding first: an episode's start
    b.steps(2, end=True)
    b.write(logs, 0, capacity=len(b.frames), add_count=None)
    assert [len(e) for e in read_dqn_replay(logs).episodes] == [4, 2]
    logs2 = tmp_path / "other" / "replay_logs"
    b = Buffer()
    b.steps(4, end=True, pad=False)  # no padding: the middle of an episode
    b.steps(2, end=True)
    b.write(logs2, 0, capacity=len(b.frames), add_count=None)
    assert [len(e) for e in read_dqn_replay(logs2).episodes] == [2]


def test_reader_subset_splits_transitions_over_checkpoints(tmp_path):
    logs = tmp_path / "replay_logs"
    for suffix in (0, 1, 2):
        _first_checkpoint(logs, suffix)
    everything = read_dqn_replay(logs)
    assert len(everything) == 6 and everything.metadata["dqn_replay_checkpoints"] == [0, 1, 2]
    # 6 steps over checkpoints 1 and 2: 3 each, so the first whole episode (5 steps) of each
    subset = read_dqn_replay(logs, transitions=6, suffixes=[1, 2])
    assert [len(e) for e in subset.episodes] == [5, 5]
    assert parse_ranges("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(DataError, match=r"observation_ckpt\.5\.gz: missing; checkpoints here: 0-2"):
        read_dqn_replay(logs, suffixes=[5])


def _break(logs: Path, name: str, how: str) -> None:
    path = logs / f"{name}_ckpt.0.gz"
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "not-gzip":
        buf = io.BytesIO()
        np.save(buf, np.zeros(3))
        path.write_bytes(buf.getvalue())
    elif how == "short":  # a whole gzip stream whose .npy header promises more rows
        with gzip.open(path, "rb") as f:
            data = f.read()
        with gzip.open(path, "wb") as f:
            f.write(data[: len(data) // 4])
    elif how == "delete":
        path.unlink()


@pytest.mark.parametrize(
    "name, how, message",
    [
        ("$store$_observation", "truncate", "truncated or corrupt"),
        ("$store$_observation", "short", "truncated: 9 of the 40 rows"),
        ("$store$_action", "truncate", "not a gzipped numpy array"),
        ("$store$_reward", "not-gzip", "not a gzipped numpy array"),
        ("$store$_terminal", "delete", "missing (every checkpoint needs its observation"),
    ],
)
def test_reader_refuses_broken_files(tmp_path, name, how, message):
    logs = tmp_path / "replay_logs"
    _first_checkpoint(logs)
    _break(logs, name, how)
    with pytest.raises(DataError) as err:
        read_dqn_replay(logs)
    text = str(err.value)
    assert f"{name}_ckpt.0.gz" in text and message in text and "\n" not in text


@pytest.mark.parametrize(
    "name, array, message",
    [
        ("$store$_observation", np.zeros((40, H, W), np.float32), "expected (rows, 84, 84) uint8"),
        ("$store$_observation", np.zeros((40, H, W, 1), np.uint8), "expected (rows, 84, 84) uint8"),
        ("$store$_observation", np.zeros((39, H, W), np.uint8), "39 rows, expected 40"),
        ("$store$_reward", np.zeros(39, np.float32), "39 rows, expected 40"),
        ("$store$_reward", np.full(40, np.nan, np.float32), "NaN or inf (first at row 0)"),
        ("$store$_action", np.zeros(40, np.float32), "expected one integer action per row"),
        ("$store$_action", np.full(40, 9, np.int32), "actions range 9..9, expected 0..3"),
        ("$store$_terminal", np.full(40, 2, np.uint8), "values other than 0 and 1"),
        ("add_count", np.array([1.5]), "expected one non-negative integer"),
    ],
)
def test_reader_refuses_wrong_types_and_lengths(tmp_path, name, array, message):
    logs = tmp_path / "replay_logs"
    _first_checkpoint(logs)
    _gz_npy(logs / f"{name}_ckpt.0.gz", array)
    with pytest.raises(DataError) as err:
        read_dqn_replay(logs, n_actions=4)
    assert f"{name}_ckpt.0.gz" in str(err.value) and message in str(err.value)


def test_reader_never_unpickles(tmp_path):
    logs = tmp_path / "replay_logs"
    _first_checkpoint(logs)
    _gz_npy(logs / "$store$_action_ckpt.0.gz", np.array([object()] * 40), allow_pickle=True)
    with pytest.raises(DataError, match="pickled Python objects, which we never load"):
        read_dqn_replay(logs)
    _first_checkpoint(logs)
    _gz_npy(logs / "$store$_observation_ckpt.0.gz", np.array([object()] * 40), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        read_dqn_replay(logs)


def test_reader_names_a_folder_without_checkpoints(tmp_path):
    from unicomp.rl.datasets import read_dataset

    with pytest.raises(DataError, match="no DQN replay checkpoints"):
        read_dqn_replay(tmp_path)
    _first_checkpoint(tmp_path / "replay_logs")
    with pytest.raises(DataError, match="a DQN replay folder; import it first"):
        read_dataset(tmp_path / "replay_logs")  # dt train --data on the raw files


def test_dqn_replay_import_cli_writes_a_data_set(tmp_path, capsys):
    from unicomp.cli import main
    from unicomp.rl.datasets import read_dataset

    logs = tmp_path / "Breakout" / "1" / "replay_logs"
    _first_checkpoint(logs, 0)
    _first_checkpoint(logs, 1)
    out = tmp_path / "breakout-dqn"
    argv = ["dt", "collect", "--env", "breakout", "--dqn-replay", str(logs.parent)]
    assert main(argv + ["--transitions", "8", "--buffers", "0-1", "--out", str(out)]) == 0
    ds = read_dataset(out)
    record = json.loads((out / "collection.json").read_text())
    assert ds.env_id == "ALE/Breakout-v5" and [len(e) for e in ds.episodes] == [5, 5]
    assert ds.obs_shape == (4, H, W) and ds.episodes[0].observations.dtype == np.uint8
    assert record["suite"] == "dqn-replay" and record["checkpoints"] == [0, 1]
    lo, hi = ATARI_REF_SCORES["breakout"]
    assert record["normalized_score_mean"] == pytest.approx(100 * (2 - lo) / (hi - lo))
    capsys.readouterr()
    assert main(argv + ["--episodes", "3", "--out", str(tmp_path / "x")]) == 2
    assert "no --episodes" in capsys.readouterr().err


# --- environments, collection, training and acting -------------------------------------------
def test_atari_env_has_the_papers_preprocessing():
    from unicomp.rl.envs import make_env
    from unicomp.rl.evaluate import default_targets, normalized_score

    assert atari_env_id("breakout") == atari_env_id("Breakout") == "ALE/Breakout-v5"
    assert atari_env_id("Hopper-v5") is None
    env = make_env("ALE/Pong-v5", max_episode_steps=5)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert not obs[:3].any() and obs[3].any()  # zeros before the first frame
        ale = env.unwrapped
        assert ale._frameskip == 1 and ale.ale.getFloat("repeat_action_probability") == 0.0
        steps = 0
        while True:
            obs, _, term, trunc, _ = env.step(0)
            steps += 1
            if term or trunc:
                break
        assert steps == 5 and trunc and obs[0].any()  # 5 steps of 4 frames; full stack
    finally:
        env.close()
    assert default_targets("ALE/Breakout-v5", 3.0, 0.0) == (ATARI_TARGETS["breakout"],)
    assert normalized_score([30.5, 1.7], "ALE/Breakout-v5").tolist() == [100.0, 0.0]
    with pytest.raises(UnicompError, match="close matches: ALE/Breakout-v5"):
        make_env("ALE/Breakot-v5")


def _collect(out: Path, episodes: int = 4) -> None:
    from unicomp.cli import main

    argv = ["dt", "collect", "--env", "ALE/Breakout-v5", "--policy", "random", "--noise", "0.5"]
    argv += ["--episodes", str(episodes), "--out", str(out), "--max-episode-steps", "40"]
    assert main(argv + ["--n-envs", str(episodes)]) == 0


def test_collect_atari_episodes(tmp_path):
    from unicomp.rl.datasets import read_dataset

    out = tmp_path / "breakout-random"
    _collect(out, episodes=2)
    ds = read_dataset(out)
    record = json.loads((out / "collection.json").read_text())
    assert len(ds) == 2 and ds.env_id == "ALE/Breakout-v5" and ds.action_dim == 4
    e = ds.episodes[0]
    assert e.observations.dtype == np.uint8 and e.observations.shape == (len(e) + 1, 4, 84, 84)
    assert all(len(e) <= 40 for e in ds.episodes)
    assert "normalized_score_mean" in record and record["versions"]["ale-py"]


def test_collect_with_an_sb3_atari_agent_epsilon_greedy(tmp_path):
    """An SB3 DQN with the CNN policy (untrained here: no Atari agent is on this machine)
    observing our (4, 84, 84) frames loads as --agent and acts with --noise as epsilon."""
    sb3 = pytest.importorskip("stable_baselines3")
    from unicomp.cli import main
    from unicomp.rl.datasets import read_dataset
    from unicomp.rl.envs import make_env

    env = make_env("ALE/Breakout-v5")
    try:
        sb3.DQN("CnnPolicy", env, buffer_size=10, seed=0, device="cpu").save(tmp_path / "dqn")
    finally:
        env.close()
    out = tmp_path / "data"
    argv = ["dt", "collect", "--env", "breakout", "--agent", str(tmp_path / "dqn.zip")]
    argv += ["--noise", "0.1", "--episodes", "2", "--max-episode-steps", "10", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "collection.json").read_text())
    assert record["components"][0]["policy"] == "dqn:dqn+noise0.1"
    assert [len(e) for e in read_dataset(out).episodes] == [10, 10]


@pytest.fixture(scope="module")
def breakout_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("atari") / "breakout"
    _collect(data)
    return data


@pytest.mark.parametrize("extra", [[], ["--context", "1"], ["--algo", "bc"]])
def test_atari_dt_trains_and_acts_in_breakout(tmp_path, breakout_data, extra):
    """A tiny Atari DT (the conv encoder, discrete actions) through `dt train`: a few steps,
    then one short episode in the real game with sampled actions; K = 1 and BC alike."""
    from unicomp.cli import main

    data = breakout_data
    run = tmp_path / "run"
    argv = ["dt", "train", "--data", str(data), "--out", str(run), "--steps", "3"]
    argv += ["--eval-every", "3", "--batch-size", "4", "--warmup-steps", "1", "--no-progress"]
    argv += ["--hidden-size", "16", "--n-layer", "1", "--n-head", "2", "--context", "4"]
    argv += ["--val-fraction", "0.25", "--test-fraction", "0.25", "--rtg-scale", "1"]
    argv += ["--eval-episodes", "1", "--eval-max-steps", "12", "--eval-sample"]
    argv += ["--precision", "fp32", "--max-ep-len", "64", *extra]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_config"]["image_shape"] == [4, 84, 84]
    assert metrics["model_config"]["discrete"] and metrics["model_config"]["act_dim"] == 4
    assert np.isfinite(metrics["test_loss"])
    (ev,) = metrics["eval"]
    assert ev["target_return"] == (None if extra == ["--algo", "bc"] else 90.0)
    assert 1 <= ev["length_mean"] <= 12 and "normalized_score_mean" in ev
    assert ev["sampled_actions"]
    if extra == ["--context", "1"]:
        assert metrics["context"] == 1
    assert (
        main(["dt", "eval", "--run", str(run), "--eval-episodes", "1", "--eval-max-steps", "5"])
        == 0
    )
    again = json.loads((run / "eval.json").read_text())
    assert again["eval"][0]["length_mean"] <= 5 and again["eval"][0]["sampled_actions"]


def test_atari_presets_are_the_papers_model():
    """configs/dt-atari-*.yaml: the paper's Atari model (DecisionTransformerConfig.atari) and
    the official evaluation (sampled actions, raw returns-to-go); quick differs in budget."""
    from unicomp.config import DTConfig, from_dict, load_yaml
    from unicomp.models.decision_transformer import DecisionTransformerConfig

    paper = DecisionTransformerConfig.atari((4, 84, 84), 4)
    root = Path(__file__).parents[1] / "configs"
    for name in ("dt-atari-paper.yaml", "dt-atari-quick.yaml"):
        cfg = from_dict(DTConfig, load_yaml(root / name), name)
        assert (cfg.context, cfg.n_layer, cfg.n_head, cfg.hidden_size) == (
            paper.max_length,
            paper.n_layer,
            paper.n_head,
            paper.hidden_size,
        )
        assert cfg.eval_sample and cfg.rtg_scale == 1.0 and cfg.max_ep_len == paper.max_ep_len
    t = from_dict(DTConfig, load_yaml(root / "dt-atari-paper.yaml")).train
    assert (t.batch_size, t.lr, t.weight_decay, t.grad_clip) == (128, 6e-4, 0.1, 1.0)
