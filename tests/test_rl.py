"""Offline RL for the Decision Transformer: data readers and writers, the model, its cache,
the training task, rollouts and scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import small_train
from unicomp.errors import DataError, UnicompError
from unicomp.models.decision_transformer import (
    DecisionTransformer,
    DecisionTransformerConfig,
    KVCache,
    build_decision_transformer,
)
from unicomp.rl.d4rl_io import read_d4rl_hdf5
from unicomp.rl.datasets import read_dataset
from unicomp.rl.dt_task import DTTask
from unicomp.rl.evaluate import evaluate_dt, normalized_score, reference_scores, run_episodes
from unicomp.rl.minari_io import read_minari, write_minari
from unicomp.rl.trajectories import Episode, TrajectoryDataset

h5py = pytest.importorskip("h5py")
pytest.importorskip("minari")
pytest.importorskip("gymnasium")

_USER_DATA = os.environ.get("UNICOMP_DATA")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a library writes to the working folder lands in the repo


# --- D4RL HDF5 --------------------------------------------------------------------------------
def _write_d4rl(path: Path, n: int = 10, **override) -> Path:
    terminals = np.zeros(n, bool)
    terminals[2] = True  # episode 0: steps 0-2, ended by the environment
    timeouts = np.zeros(n, bool)
    timeouts[6] = True  # episode 1: steps 3-6, cut by the time limit; 7-9: the file ends
    fields = {
        "observations": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
        "next_observations": np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 3,
        "actions": np.linspace(-1, 1, n * 2, dtype=np.float32).reshape(n, 2),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    fields.update(override)
    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            if value is not None:
                f[key] = value
    return path


def test_d4rl_reader_splits_on_terminals_and_timeouts(tmp_path):
    ds = read_d4rl_hdf5(_write_d4rl(tmp_path / "d.hdf5"), env_id="Hopper-v5")
    assert [len(e) for e in ds.episodes] == [3, 4, 3]
    assert [e.terminations.tolist() for e in ds.episodes] == [
        [False, False, True],
        [False] * 4,
        [False] * 3,
    ]
    # The time limit cut episode 1; the file's end cut episode 2.
    assert [e.truncations[-1] for e in ds.episodes] == [False, True, True]
    e1 = ds.episodes[1]
    assert e1.rewards.tolist() == [3, 4, 5, 6]
    # next_observations supplies the final observation: T + 1 rows.
    assert e1.observations.shape == (5, 3)
    assert e1.observations[-1].tolist() == [18 + 3, 19 + 3, 20 + 3]  # next of step 6
    assert ds.summary()["return_max"] == 7 + 8 + 9
    assert ds.env_id == "Hopper-v5" and ds.n_steps == 10


def test_d4rl_reader_without_next_observations_keeps_t_rows(tmp_path):
    ds = read_d4rl_hdf5(_write_d4rl(tmp_path / "d.hdf5", next_observations=None))
    assert [e.observations.shape[0] for e in ds.episodes] == [3, 4, 3]


def test_d4rl_without_timeouts_needs_a_time_limit(tmp_path):
    path = _write_d4rl(tmp_path / "d.hdf5", timeouts=None, terminals=np.zeros(10, bool))
    with pytest.raises(DataError, match="d.hdf5: missing field 'timeouts'"):
        read_d4rl_hdf5(path)
    ds = read_d4rl_hdf5(path, max_episode_steps=4)  # the official script's rule
    assert [len(e) for e in ds.episodes] == [4, 4, 2]


@pytest.mark.parametrize(
    ("override", "field", "what"),
    [
        ({"actions": None}, "actions", "missing field"),
        ({"rewards": np.zeros(9, np.float32)}, "rewards", "9 rows, expected 10"),
        ({"observations": np.full((10, 3), np.nan, np.float32)}, "observations", "NaN or inf"),
        ({"rewards": np.array([0, 1, np.inf] + [0] * 7, np.float32)}, "rewards", "at row 2"),
        ({"rewards": np.zeros((10, 2), np.float32)}, "rewards", "expected \\(10,\\)"),
    ],
)
def test_d4rl_reader_rejects_malformed_files(tmp_path, override, field, what):
    path = _write_d4rl(tmp_path / "bad.hdf5", **override)
    with pytest.raises(DataError, match=f"bad.hdf5.*'{field}'.*{what}|bad.hdf5.*{what}.*{field}"):
        read_d4rl_hdf5(path)


def test_d4rl_reader_rejects_empty_and_non_hdf5(tmp_path):
    empty = {
        k: np.zeros((0, 3) if k == "observations" else (0,), np.float32)
        for k in ("observations", "actions", "rewards", "terminals", "timeouts")
    }
    with pytest.raises(DataError, match="empty.hdf5: field 'observations' is empty"):
        read_d4rl_hdf5(_write_d4rl(tmp_path / "empty.hdf5", next_observations=None, **empty))
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(DataError, match="text.hdf5: not a readable HDF5 file"):
        read_d4rl_hdf5(tmp_path / "text.hdf5")
    with pytest.raises(DataError, match="does not exist"):
        read_d4rl_hdf5(tmp_path / "missing.hdf5")


# --- Minari -----------------------------------------------------------------------------------
def _episodes(lengths, obs_dim=4, act_dim=2, seed=0, discrete=False) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for T in lengths:
        actions = (
            rng.integers(0, act_dim, size=T)
            if discrete
            else rng.uniform(-1, 1, size=(T, act_dim)).astype(np.float32)
        )
        trunc = np.zeros(T, bool)
        trunc[-1] = True
        out.append(
            Episode(
                rng.normal(size=(T + 1, obs_dim)),
                actions,
                np.arange(1, T + 1, dtype=np.float64),
                np.zeros(T, bool),
                trunc,
            )
        )
    return out


def test_minari_round_trip(tmp_path):
    ds = TrajectoryDataset(_episodes([3, 5, 2]), env_id="Hopper-v5", source="test")
    data_dir = write_minari(ds, tmp_path / "set", ref_scores=(-20.0, 3000.0))
    back = read_minari(tmp_path / "set")
    assert back.env_id == "Hopper-v5" and len(back) == 3
    assert (back.metadata["ref_min_score"], back.metadata["ref_max_score"]) == (-20.0, 3000.0)
    for a, b in zip(ds.episodes, back.episodes, strict=True):
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # minari itself reads it, and read_dataset dispatches on a folder
    import minari

    assert minari.MinariDataset(data_dir).total_steps == 10
    assert len(read_dataset(tmp_path / "set")) == 3
    with pytest.raises(UnicompError, match="already holds a Minari data set"):
        write_minari(ds, tmp_path / "set")


def test_minari_discrete_round_trip(tmp_path):
    ds = TrajectoryDataset(_episodes([4, 3], act_dim=5, discrete=True), source="test")
    write_minari(ds, tmp_path / "set")
    back = read_minari(tmp_path / "set")
    assert back.discrete and back.action_dim == 5
    np.testing.assert_array_equal(back.episodes[0].actions, ds.episodes[0].actions)


def test_read_minari_dataset_made_by_minari(tmp_path, monkeypatch):
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    buffers = [
        EpisodeBuffer(
            observations=e.observations.astype(np.float32),
            actions=e.actions,
            rewards=e.rewards,
            terminations=e.terminations,
            truncations=e.truncations,
        )
        for e in _episodes([4, 6], obs_dim=3, act_dim=1)
    ]
    minari.create_dataset_from_buffers(
        "test/pendulum/made-v0",
        buffers,
        env="Pendulum-v1",
        algorithm_name="test",
        author="unicomp",
        author_email="none",
        code_permalink="none",
        description="tiny",
        eval_env="Pendulum-v1",
    )
    ds = read_minari(tmp_path / "root" / "test" / "pendulum" / "made-v0")
    assert ds.env_id == "Pendulum-v1" and [len(e) for e in ds.episodes] == [4, 6]
    assert ds.metadata["dataset_id"] == "test/pendulum/made-v0"
    assert isinstance(gym.spec(ds.env_id), gym.envs.registration.EnvSpec)


def test_minari_reader_rejects_bad_data(tmp_path):
    with pytest.raises(DataError, match="no Minari data set at"):
        read_minari(tmp_path)
    eps = _episodes([3, 3])
    eps[1].rewards[1] = np.nan
    # write around our own validation, as a foreign writer could
    ds = TrajectoryDataset(eps, source="test")
    ds.validate = lambda where: None  # type: ignore[method-assign]
    write_minari(ds, tmp_path / "nan")
    with pytest.raises(DataError, match="main_data.hdf5: episode_1: field 'rewards' holds NaN"):
        read_minari(tmp_path / "nan")


# --- the model --------------------------------------------------------------------------------
def _inputs(B=2, K=6, obs=5, act=3, seed=0, t0=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "returns_to_go": torch.randn(B, K, 1, generator=g),
        "states": torch.randn(B, K, obs, generator=g),
        "actions": torch.randn(B, K, act, generator=g).tanh(),
        "timesteps": (torch.arange(K) + t0).repeat(B, 1),
    }


def _model(attn="sdpa", **kw) -> DecisionTransformer:
    torch.manual_seed(0)
    kw = {"max_length": 6, "max_ep_len": 64, "hidden_size": 32, **kw}
    return build_decision_transformer(5, 3, attn_implementation=attn, **kw).eval()


def test_dt_shapes_and_paper_sizes():
    m = _model()
    x = _inputs()
    out = m(x)
    assert out.shape == (2, 6, 3) and out.abs().max() <= 1  # tanh head
    gym_cfg = DecisionTransformerConfig.gym(11, 3)
    assert (gym_cfg.n_layer, gym_cfg.n_head, gym_cfg.hidden_size) == (3, 1, 128)
    atari = DecisionTransformerConfig.atari((4, 84, 84), 6, max_length=4, max_ep_len=100)
    assert (atari.n_layer, atari.n_head, atari.discrete) == (6, 8, True)
    m = DecisionTransformer(atari).eval()
    frames = torch.rand(2, 4, 4, 84, 84)
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 6, (2, 4)), 6).float()
    xi = {**_inputs(K=4, act=6), "states": frames, "actions": one_hot}
    assert m(xi).shape == (2, 4, 6)  # logits
    # no position table of its own: only the timestep embedding orders the tokens
    assert not any("wpe" in n for n, _ in m.named_parameters())


def check_causal(m, K: int, step: int) -> None:
    """Changing a token of ``step`` (R, s or a) of a left-padded batch never changes an
    earlier prediction; R and s change that step's, a only the next step's."""
    x = _inputs(K=K)
    mask = torch.ones(2, K)
    mask[0, :2] = 0  # left padding in row 0
    base = m(x, mask)
    for key in ("returns_to_go", "states", "actions"):
        changed = {k: v.clone() for k, v in x.items()}
        changed[key][:, step] += 1.0
        out = m(changed, mask)
        real = mask.bool()
        real[:, step:] = False
        assert torch.allclose(out[real], base[real], atol=1e-6), key  # earlier steps unchanged
        if key != "actions":  # a_t is not seen by s_t's token: step t changes only for R, s
            assert not torch.allclose(out[:, step], base[:, step])
        else:
            assert torch.allclose(out[:, step], base[:, step], atol=1e-6)
            assert not torch.allclose(out[:, step + 1], base[:, step + 1])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_dt_is_causal(attn):
    check_causal(_model(attn), K=6, step=4)


def test_dt_left_padding_equals_a_shorter_context():
    m = _model()
    x = _inputs()
    mask = torch.ones(2, 6)
    mask[0, :2] = 0
    padded = m(x, mask)[0, 2:]
    short = m({k: v[:1, 2:] for k, v in x.items()})[0]
    assert torch.allclose(padded, short, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_dt_gradients_stay_finite_with_padding(attn):
    """Padded query rows attend to nothing real; they must not poison the gradients."""
    m = _model(attn).train()
    x = _inputs()
    mask = torch.ones(2, 6)
    mask[0, :5] = 0  # row 0: one real step
    out = m(x, mask)
    out[mask.bool()].pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_kv_cache_steps_equal_full_recomputation(attn):
    """A short episode (5 steps, K = 6): the window never slides."""
    m = _model(attn)
    x = _inputs(K=5)
    rollout = m.start(2)
    preds = []
    for t in range(5):
        preds.append(
            m.step(rollout, x["returns_to_go"][:, t], x["states"][:, t], x["timesteps"][:, t])
        )
        m.record_action(rollout, x["actions"][:, t])
    full = m(x)
    assert torch.allclose(torch.stack(preds, 1), full, atol=1e-5)
    # one backbone call per step: the cache holds 3 tokens per step, the last action pending
    assert rollout.cache.get_seq_length() == 3 * 5 - 1


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "kw", [{"n_head": 1}, {"n_head": 4}, {"extra": {"scale_attn_by_inverse_layer_idx": True}}]
)
def test_act_backbone_equals_the_transformer(attn, kw):
    """Acting's own backbone (last token only, plain key/value tensors) computes what
    transformers' GPT-2 computes, whole or fed in pieces through the cache."""
    m = _model(attn, **kw)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 11, 32, generator=g)
    full = m._backbone(tokens)  # (B, T, H)
    out, cache = m._act_backbone(tokens)
    assert torch.allclose(out, full[:, -1], atol=1e-5)
    assert cache.get_seq_length() == 11
    for cut in (1, 7, 10):  # the rest fed after a cache of the first ``cut`` tokens
        _, head = m._act_backbone(tokens[:, :cut])
        assert torch.allclose(head.layers[-1][0], cache.layers[-1][0][:, :, :cut], atol=1e-5)
        out, tail = m._act_backbone(tokens[:, cut:], head)
        assert torch.allclose(out, full[:, -1], atol=1e-5), cut
        assert tail.get_seq_length() == 11
        for (k, v), (k_ref, v_ref) in zip(tail.layers, cache.layers, strict=True):
            assert torch.allclose(k, k_ref, atol=1e-5) and torch.allclose(v, v_ref, atol=1e-5)


def test_kv_cache_buffer_moves_and_grows():
    """Rolling far past the buffer's capacity (the live tokens moved back to the front, the
    buffer grown) gives what a buffer with room for every token gives."""
    m = _model()
    g = torch.Generator().manual_seed(2)
    small, big = KVCache(capacity=4), KVCache(capacity=1000)
    moved = False
    for step in range(12):
        tokens = torch.randn(2, 3 if step else 5, 32, generator=g)
        if step >= 3:
            small.drop_oldest(3)
            big.drop_oldest(3)
        a, _ = m._act_backbone(tokens, small)
        b, _ = m._act_backbone(tokens, big)
        assert torch.allclose(a, b, atol=1e-6), step
        assert small.get_seq_length() == big.get_seq_length() == min(5 + 3 * step, 11)
        for (k, v), (k_big, v_big) in zip(small.layers, big.layers, strict=True):
            assert torch.allclose(k, k_big, atol=1e-6) and torch.allclose(v, v_big, atol=1e-6)
        moved = moved or (step >= 3 and small.start == 0)
    assert small.capacity == 22 and moved  # grown twice (4 -> 10 -> 22), moved back later


def test_exact_window_matches_recomputation_with_many_heads():
    m = _model(n_head=4, n_layer=2)
    T, K = 9, 6
    x = _inputs(K=T, t0=50)  # late timesteps
    rollout = m.start(2, window="exact")
    for t in range(T):
        pred = m.step(rollout, x["returns_to_go"][:, t], x["states"][:, t], x["timesteps"][:, t])
        m.record_action(rollout, x["actions"][:, t])
        ref = m({k: v[:, max(0, t + 1 - K) : t + 1] for k, v in x.items()})[:, -1]
        assert torch.allclose(pred, ref, atol=1e-5), t


def test_sliding_window_exact_and_rolling():
    m = _model()
    T, K = 10, 6
    x = _inputs(K=T)
    exact, rolling = m.start(2, window="exact"), m.start(2, window="rolling")
    for t in range(T):
        args = (x["returns_to_go"][:, t], x["states"][:, t], x["timesteps"][:, t])
        e, r = m.step(exact, *args), m.step(rolling, *args)
        m.record_action(exact, x["actions"][:, t])
        m.record_action(rolling, x["actions"][:, t])
        ref = m({k: v[:, max(0, t + 1 - K) : t + 1] for k, v in x.items()})[:, -1]
        assert torch.allclose(e, ref, atol=1e-5), t  # exact: the last K steps, recomputed
        if t < K:
            assert torch.allclose(r, ref, atol=1e-5), t
    assert rolling.cache.get_seq_length() == 3 * K - 1  # bounded: oldest steps dropped
    assert not torch.allclose(r, ref, atol=1e-6)  # an approximation once it rolls
    with pytest.raises(RuntimeError, match="record_action"):
        m.step(exact, *args)
        m.step(exact, *args)


# --- the training task ------------------------------------------------------------------------
def _task(lengths=(3, 7, 12, 5, 9, 4, 8), **kw) -> DTTask:
    ds = TrajectoryDataset(_episodes(lengths), env_id="Hopper-v5", source="test")
    kw = {"context": 5, "rtg_scale": 10.0, "val_fraction": 0.15, "test_fraction": 0.15, **kw}
    return DTTask(ds, **kw)


def test_dt_task_windows_padding_and_masks():
    task = _task()
    ids = task.split_ids
    assert sorted(np.concatenate(list(ids.values())).tolist()) == list(range(7))
    assert len(ids["val"]) == 1 and len(ids["test"]) == 1
    # the last step of the first training episode: 1 real step, 4 padded in front
    first = task.dataset.episodes[ids["train"][0]]
    T = len(first)
    b = task.windows("train", torch.tensor([T - 1, 0]))
    assert {k: tuple(v.shape) for k, v in b.x.items()} == {
        "returns_to_go": (2, 5, 1),
        "states": (2, 5, 4),
        "actions": (2, 5, 2),
        "timesteps": (2, 5),
    }
    assert b.mask[0].tolist() == [0, 0, 0, 0, 1]
    assert b.x["timesteps"][0].tolist() == [0, 0, 0, 0, T - 1]
    assert b.x["returns_to_go"][0, -1, 0] == pytest.approx(T / 10.0)  # the last reward, scaled
    assert (b.x["states"][0, :4] == 0).all() and (b.x["actions"][0, :4] == 0).all()
    # a window at the start of an episode runs to min(K, T) real steps, padded in front
    n_real = min(5, T)
    assert b.mask[1].tolist() == [0] * (5 - n_real) + [1] * n_real
    rtg = b.x["returns_to_go"][1, 5 - n_real :, 0] * 10
    expected = [sum(range(t + 1, T + 1)) for t in range(n_real)]
    assert rtg.tolist() == pytest.approx(expected)
    assert b.y.shape == (2, 5, 2) and torch.equal(b.target_mask, b.mask.bool())
    assert (b.y[~b.target_mask] == 0).all()  # padded steps: zeros, not scored
    np.testing.assert_allclose(b.y[1, -1].numpy(), first.actions[n_real - 1], rtol=1e-6)


def test_dt_task_sampling_is_seeded_and_normalised():
    task = _task()
    a, b = task.train_batch(3, 16, seed=1), task.train_batch(3, 16, seed=1)
    assert torch.equal(a.x["states"], b.x["states"]) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.x["states"], task.train_batch(4, 16, seed=1).x["states"])
    train_eps = [task.dataset.episodes[i] for i in task.split_ids["train"]]
    states = torch.as_tensor(np.concatenate([e.states for e in train_eps]))
    normed = (states.float() - torch.as_tensor(task.state_mean)) / torch.as_tensor(task.state_std)
    assert (
        normed.mean(0).abs().max() < 1e-5 and (normed.std(0, unbiased=False) - 1).abs().max() < 1e-3
    )
    val = task.split("val")
    assert len(val) == task._flat["val"].n  # every start step of the held-out episode


def test_dt_task_loss_ignores_padding():
    task = _task()
    b = task.windows("train", torch.tensor([0, 1]))
    perfect = torch.where(b.target_mask[..., None], b.y, torch.full_like(b.y, 99.0))
    assert task.loss(perfect, b.y, b.target_mask) == 0  # padded outputs are never looked at
    assert task.loss(perfect, b.y) > 0  # without the mask every step counts
    assert task.correct(perfect, b.y, b.target_mask) == (0, 0, 0, 2)
    assert task.correct(perfect, b.y, b.target_mask).examples == 2  # a named result


def test_dt_task_discrete_targets():
    eps = _episodes([6, 4, 5, 7], act_dim=3, discrete=True)
    task = DTTask(TrajectoryDataset(eps, source="t"), context=4, val_fraction=0.25)
    T = len(task.dataset.episodes[task.split_ids["train"][0]])
    b = task.windows("train", torch.tensor([T - 1]))  # the episode's last step: 3 padded
    assert b.x["actions"].shape == (1, 4, 3) and b.y.shape == (1, 4)
    assert b.target_mask[0].tolist() == [False] * 3 + [True] and b.y[0, :3].tolist() == [0] * 3
    assert b.x["actions"][0, :3].sum() == 0 and b.x["actions"][0, 3].sum() == 1  # one-hot
    logits = torch.nn.functional.one_hot(b.y, 3).float() * 10
    logits[0, :3] = torch.tensor([0.0, 10.0, 0.0])  # wrong at the padded steps: not scored
    assert task.correct(logits, b.y, b.target_mask) == (1, 1, 1, 1)
    assert task.loss(logits, b.y, b.target_mask) < 1e-3


def test_dt_task_needs_three_episodes():
    with pytest.raises(DataError, match="at least 3"):
        _task(lengths=(3, 4))


# --- rollouts, scores, training and evaluation ------------------------------------------------
def test_normalized_score_arithmetic():
    lo, hi = reference_scores("Hopper-v5")
    assert (lo, hi) == (-20.272305, 3234.3)
    assert normalized_score([lo, hi], "hopper-medium-v2").tolist() == pytest.approx([0, 100])
    assert reference_scores("HalfCheetah-v5") == (-280.178953, 12135.0)
    assert reference_scores("Walker2d-v5") == (1.629008, 4592.3)
    mid = (1.629008 + 4592.3) / 2
    assert normalized_score(mid, "walker2d")[()] == pytest.approx(50)
    assert normalized_score([1.0], "Pendulum-v1") is None


def test_run_episodes_is_seeded_and_records():
    from unicomp.rl.collect import RandomPolicy, make_policy

    policy, _ = make_policy("random", "Pendulum-v1", seed=3)
    assert isinstance(policy, RandomPolicy)
    a = run_episodes("Pendulum-v1", policy, 5, seed=7, n_envs=2, max_episode_steps=12, record=True)
    policy, _ = make_policy("random", "Pendulum-v1", seed=3)
    b = run_episodes("Pendulum-v1", policy, 5, seed=7, n_envs=2, max_episode_steps=12)
    np.testing.assert_array_equal(a.returns, b.returns)
    assert a.lengths.tolist() == [12] * 5 and a.seeds == [7, 8, 9, 10, 11]
    assert [e.observations.shape for e in a.episodes] == [(13, 3)] * 5
    assert all(e.truncations[-1] and not e.terminations.any() for e in a.episodes)
    np.testing.assert_allclose([e.total_return for e in a.episodes], a.returns)


def test_collect_cli_writes_a_minari_data_set(tmp_path, capsys):
    from unicomp.cli import main

    out = tmp_path / "pendulum"
    argv = ["dt", "collect", "--env", "Pendulum-v1", "--policy", "random", "--noise", "0.1"]
    argv += ["--episodes", "3", "--out", str(out), "--max-episode-steps", "15", "--n-envs", "2"]
    assert main(argv) == 0
    ds = read_minari(out)
    record = json.loads((out / "collection.json").read_text())
    assert len(ds) == 3 and ds.env_id == "Pendulum-v1"
    assert record["return_mean"] == pytest.approx(ds.returns().mean())
    assert record["components"][0]["policy"] == "random+noise0.1"
    assert main(argv) == 2  # the folder already holds a data set
    assert "already holds" in capsys.readouterr().err
    assert main(["dt", "collect", "--env", "Pendulum-v1", "--suite", "medium"] + argv[-8:]) == 2
    assert "no suites for Pendulum-v1" in capsys.readouterr().err


def test_suite_episode_split():
    from unicomp.rl.collect import SUITES, split_episodes, suite_components

    assert split_episodes(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(split_episodes(7, [1] * 6)) == 7
    assert len(suite_components("Hopper-v5", "medium-expert")) == 2
    assert set(SUITES["HalfCheetah"]) == {
        "random",
        "medium",
        "medium-replay",
        "expert",
        "medium-expert",
    }
    with pytest.raises(UnicompError, match="unknown suite"):
        suite_components("Hopper-v5", "hard")


def test_train_through_the_loop_then_act_in_hopper(tmp_path):
    """Random-policy data from Hopper-v5, a few steps of the one training loop, then one
    evaluation episode with the cached DT agent."""
    from unicomp.rl.collect import make_policy
    from unicomp.train import train

    policy, _ = make_policy("random", "Hopper-v5", seed=0)
    data = run_episodes(
        "Hopper-v5", policy, 12, seed=0, n_envs=6, max_episode_steps=30, record=True
    )
    ds = TrajectoryDataset(data.episodes, env_id="Hopper-v5", source="test")
    task = DTTask(ds, context=8, max_ep_len=30, val_fraction=0.2, test_fraction=0.2)
    model = build_decision_transformer(11, 3, max_length=8, max_ep_len=30, hidden_size=32)
    metrics = train(model, task, small_train(steps=40, eval_every=20, lr=1e-3), tmp_path / "run")
    curve = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    first, last = (float(r.split(",")[1]) for r in (curve[1], curve[-1]))
    assert last < first  # the action MSE falls
    assert np.isfinite(metrics["test_loss"])
    norm = task.normalization()
    result = evaluate_dt(
        model,
        "Hopper-v5",
        target_return=100.0,
        state_mean=np.array(norm["state_mean"]),
        state_std=np.array(norm["state_std"]),
        rtg_scale=norm["rtg_scale"],
        episodes=2,
        n_envs=2,
        max_episode_steps=30,
    )
    assert result["episodes"] == 2 and 1 <= result["length_mean"] <= 30
    assert np.isfinite(result["normalized_score_mean"])


def test_dt_agent_discrete_actions_in_cartpole():
    from unicomp.rl.evaluate import DTAgent

    torch.manual_seed(0)
    model = build_decision_transformer(4, 2, discrete=True, max_length=4, hidden_size=16).eval()
    agent = DTAgent(model, 50.0, None, None, rtg_scale=10.0)
    result = run_episodes("CartPole-v1", agent, 3, n_envs=3, max_episode_steps=10)
    assert (result.lengths >= 1).all() and (result.lengths <= 10).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not _USER_DATA or not (Path(_USER_DATA) / "sb3-agents").is_dir(),
    reason="UNICOMP_DATA has no sb3-agents folder (rl-trained-agents)",
)
def test_real_sb3_agents_act_in_v5():
    """The zoo's TQC (no normalisation) and PPO (VecNormalize statistics) load and walk."""
    from unicomp.rl.collect import load_sb3_agent

    agents = Path(_USER_DATA) / "sb3-agents"
    tqc = load_sb3_agent(agents / "tqc" / "Hopper-v3_1", "Hopper-v5")
    ppo = load_sb3_agent(agents / "ppo" / "Hopper-v3_1", "Hopper-v5")
    assert tqc.obs_norm is None and ppo.obs_norm is not None
    assert ppo.obs_norm["mean"].shape == (11,)
    for policy in (tqc, ppo):
        r = run_episodes("Hopper-v5", policy, 2, seed=0, n_envs=2, max_episode_steps=200)
        assert r.returns.mean() > 300, policy.name  # random: about 20, falling in 20 steps
    ppo.obs_norm = None  # without its statistics PPO falls early (measured: 63 in 65 steps)
    r = run_episodes("Hopper-v5", ppo, 2, seed=0, n_envs=2, max_episode_steps=200)
    assert r.returns.mean() < 200


def test_dt_train_cli_trains_then_acts(tmp_path, capsys):
    from unicomp.cli import main

    data = tmp_path / "hopper-random"
    collect = ["dt", "collect", "--env", "Hopper-v5", "--policy", "random", "--episodes", "8"]
    assert main(collect + ["--out", str(data), "--max-episode-steps", "25", "--n-envs", "4"]) == 0
    run = tmp_path / "run"
    argv = ["dt", "train", "--data", str(data), "--out", str(run), "--steps", "4"]
    argv += ["--eval-every", "2", "--batch-size", "8", "--warmup-steps", "2", "--no-progress"]
    argv += ["--hidden-size", "16", "--n-layer", "1", "--context", "5", "--val-fraction", "0.2"]
    argv += ["--eval-episodes", "2", "--eval-max-steps", "10", "--eval-targets", "100,50"]
    argv += ["--precision", "fp32"]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env"] == "Hopper-v5" and metrics["steps"] == 4
    assert [e["target_return"] for e in metrics["eval"]] == [100.0, 50.0]
    assert all(1 <= e["length_mean"] <= 10 for e in metrics["eval"])
    assert len(metrics["normalization"]["state_mean"]) == 11
    assert (run / "config.yaml").exists() and (run / "best.safetensors").exists()
    capsys.readouterr()
    # resume from the saved config: continue to 6 steps
    assert main(["dt", "train", "--resume", "--out", str(run), "--steps", "6"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
