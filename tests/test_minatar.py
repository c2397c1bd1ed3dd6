"""MinAtar, the CPU-sized Atari, for the Decision Transformer: the environments in unicomp's
frame layout, ``dt collect --suite dqn-replay --from-training`` (a learning DQN's whole
experience, as DQN Replay holds it) and a DT, K=1 and BC trained on it. Tiny budgets: a few
hundred environment steps, a few gradient steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("minatar")
pytest.importorskip("stable_baselines3")
pytest.importorskip("minari")

import unicomp.rl.dqn_training as dqn_training  # noqa: E402
from unicomp.cli import main  # noqa: E402
from unicomp.errors import UnicompError  # noqa: E402
from unicomp.rl.envs import make_env  # noqa: E402
from unicomp.rl.evaluate import default_targets, reference_scores  # noqa: E402
from unicomp.rl.minari_io import read_minari  # noqa: E402

COLLECT = ["dt", "collect", "--env", "MinAtar/Breakout-v1", "--n-envs", "2"]
DQN = [*COLLECT, "--suite", "dqn-replay", "--from-training", "--eval-episodes", "2"]
TINY_DT = ["--steps", "3", "--batch-size", "4", "--eval-every", "3", "--device", "cpu"]
TINY_DT += ["--n-layer", "1", "--hidden-size", "16", "--no-progress", "--precision", "fp32"]
TINY_DT += ["--warmup-steps", "0", "--eval-episodes", "2", "--eval-max-steps", "20"]


def test_minatar_frames_are_channels_first_uint8():
    for game, channels, actions in (("Breakout", 4, 3), ("Seaquest", 10, 6)):
        env = make_env(f"MinAtar/{game}-v1")
        obs, _ = env.reset(seed=0)
        assert obs.shape == (channels, 10, 10) and obs.dtype == np.uint8
        assert set(np.unique(obs)) <= {0, 255} and obs.any()
        assert env.observation_space.shape == obs.shape
        assert env.action_space.n == actions
        obs2, *_ = env.step(0)
        assert obs2.shape == obs.shape
        env.close()


def test_minatar_is_not_the_ale_game_of_the_same_name():
    # Our Atari tables (human-normalised scores, the official targets) are the ALE games'.
    assert reference_scores("MinAtar/Breakout-v1") is None
    assert reference_scores("ALE/Breakout-v5") is not None
    assert default_targets("MinAtar/Breakout-v1", 12.0, 0.0) == (12.0, 6.0)


def test_a_misspelt_minatar_id_names_the_close_ones():
    with pytest.raises(UnicompError, match="close matches: MinAtar/Breakout-v1"):
        make_env("MinAtar/Breakot-v1")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """600 steps, learning from step 100, evaluated at 300 and 600: the data set folder and
    the trained model (caught on its way out of training)."""
    out = tmp_path_factory.mktemp("dqn") / "stream"
    caught = {}
    real = dqn_training._train

    def spy(*args, **kwargs):
        caught["model"], stream, curve = real(*args, **kwargs)
        return caught["model"], stream, curve

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dqn_training, "_train", spy)
        args = ["--steps", "600", "--eval-every", "300", "--learning-starts", "100"]
        assert main([*DQN, *args, "--out", str(out)]) == 0
    return out, caught["model"]


def test_the_data_set_is_the_dqns_whole_stream_in_order(learned):
    out, model = learned
    record = json.loads((out / "collection.json").read_text())
    assert record["suite"] == "dqn-replay"
    assert record["training_steps"] == record["steps"] == 600
    assert [e["step"] for e in record["evaluations"]] == [300, 600]
    assert record["random_policy"]["step"] == 0
    h = record["hyperparameters"]
    assert h["network"] == "MinAtarNet" and h["learning_starts"] == 100
    assert h["target_update_interval"] == 1000 and h["batch_size"] == 32
    assert record["paper_fraction"] == round(600 / 500_000, 4)
    assert (out / dqn_training.AGENT_FILE).is_file()
    data = read_minari(out)
    assert data.n_steps == 600 and data.env_id == "MinAtar/Breakout-v1"
    # SB3's replay (100,000 transitions) still holds the whole run: the same stream.
    buf = model.replay_buffer
    assert buf.size() == 600
    states = np.concatenate([e.states for e in data.episodes])
    np.testing.assert_array_equal(states, buf.observations[:600, 0])
    actions = np.concatenate([e.actions for e in data.episodes])
    np.testing.assert_array_equal(actions, buf.actions[:600, 0, 0])
    rewards = np.concatenate([e.rewards for e in data.episodes])
    np.testing.assert_allclose(rewards, buf.rewards[:600, 0])
    # Episodes end where the environment ended them; the last may still be running.
    ends = np.cumsum([len(e) for e in data.episodes]) - 1
    done = np.flatnonzero(buf.dones[:600, 0])
    assert list(ends[: len(done)]) == list(done)
    for e in data.episodes[:-1]:
        assert e.terminations[-1] and not e.truncations[-1]
    # The final observation of each finished episode is the one the buffer stored after it.
    for e, end in zip(data.episodes[: len(done)], done, strict=True):
        np.testing.assert_array_equal(e.observations[-1], buf.next_observations[end, 0])


def test_the_data_set_normalises_by_its_random_policy_and_its_dqn(learned):
    out, _ = learned
    record = json.loads((out / "collection.json").read_text())
    ref = record["reference_scores"]
    lo, hi = record["random_policy"]["return_mean"], record["evaluations"][-1]["return_mean"]
    if hi > lo:
        assert (ref["ref_min_score"], ref["ref_max_score"]) == (lo, hi)
        assert record["normalized_score_mean"] == pytest.approx(
            100 * (record["return_mean"] - lo) / (hi - lo)
        )
    else:  # a DQN this short may not beat random: then no scale, not a division by ~0
        assert ref is None and "normalized_score_mean" not in record


@pytest.mark.parametrize("extra", [[], ["--context", "1"], ["--algo", "bc"]])
def test_dt_k1_and_bc_train_on_minatar_frames(learned, tmp_path, extra):
    out, _ = learned
    run = tmp_path / "run"
    assert main(["dt", "train", "--data", str(out), "--out", str(run), *TINY_DT, *extra]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env"] == "MinAtar/Breakout-v1"
    assert np.isfinite(metrics["test_loss"])
    assert metrics["eval"] and all(np.isfinite(e["return_mean"]) for e in metrics["eval"])


def test_small_frames_get_minatars_convolution():
    import torch

    from unicomp.models.decision_transformer import ConvEncoder

    small, large = ConvEncoder((4, 10, 10), 32), ConvEncoder((4, 84, 84), 32)
    assert small.convs[0].kernel_size == (3, 3) and small.convs[0].out_channels == 16
    assert large.convs[0].kernel_size == (8, 8)
    assert small(torch.zeros(2, 4, 10, 10)).shape == (2, 32)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--steps", "10", "--eval-every", "0"], "--eval-every must be at least 1"),
        (["--steps", "10", "--episodes", "3"], "no --episodes or --noise"),
        (["--steps", "10", "--max-train-steps", "5"], "the DQN trains for --steps"),
    ],
)
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "d"
    assert main([*DQN, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "data").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*COLLECT, "--suite", "dqn-replay", "--out"], "goes with --from-training"),
        ([*COLLECT, "--policy", "random", "--episodes", "2", "--steps", "5", "--out"],
         "--steps goes with --suite dqn-replay --from-training"),
        (["dt", "collect", "--env", "Hopper-v5", "--suite", "dqn-replay", "--from-training",
          "--steps", "5", "--out"], "DQN needs discrete actions"),
    ],
)  # fmt: skip
def test_dqn_replay_goes_with_from_training_and_discrete_actions(tmp_path, capsys, argv, message):
    assert main([*argv, str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_episode_still_running_at_the_end_ends_truncated():
    stream = dqn_training._Stream((2,), np.float32, 5)
    for i in range(5):
        done = i == 1
        info = {"terminal_observation": np.full(2, 9.0)} if done else {}
        stream.add(np.full(2, i), i % 2, 1.0, done, info)
    first, last = stream.episodes(np.full(2, 7.0))
    assert len(first) == 2 and first.terminations[-1] and first.observations[-1][0] == 9
    assert len(last) == 3 and last.truncations[-1] and not last.terminations.any()
    assert last.observations[-1][0] == 7


# --- the Atari claims' verdicts, on synthetic figures ---------------------------------------
def _runs(scores, std=20.0, episodes=20, steps=1000, batch=64, lr=3e-4, context=30):
    return [{"normalized_score_mean": s, "normalized_score_std": std, "episodes": episodes,
             "steps": steps, "batch_size": batch, "lr": lr, "context": context,
             "total_params": 10} for s in scores]  # fmt: skip


def _evidence(rows_by_game):
    from unicomp.reports.claims import Evidence

    return Evidence({}, {}, {}, {}, 0.5, None, rows_by_game)


def _judge(name, ev):
    from unicomp.reports.claims import CLAIMS, judge

    return judge(next(c for c in CLAIMS if c.name == name), ev)


BREAKOUT, SEAQUEST = "MinAtar/Breakout-v1", "MinAtar/Seaquest-v1"
FULL = {"steps": 20_000, "batch": 128}


def test_k1_worse_holds_only_with_three_seeds_in_both_games_beyond_the_noise():
    rows = {g: {"DT": _runs([60, 62, 58], **FULL), "DT K=1": _runs([20, 22, 18], **FULL)}
            for g in (BREAKOUT, SEAQUEST)}  # fmt: skip
    ours, verdict, reason = _judge("atari-k1-worse", _evidence(rows))
    assert verdict == "holds", reason
    assert "Breakout DT K=1 20.0" in ours and "Seaquest DT 60.0" in ours
    # one seed each: indicative, never holds
    rows1 = {g: {k: r[:1] for k, r in v.items()} for g, v in rows.items()}
    assert _judge("atari-k1-worse", _evidence(rows1))[1] == "indicative"
    # a gap inside the evaluation noise (std 200 over 20 episodes) is no difference
    noisy = {g: {"DT": _runs([60, 62, 58], std=200, **FULL),
                 "DT K=1": _runs([50, 52, 48], std=200, **FULL)} for g in rows}  # fmt: skip
    assert _judge("atari-k1-worse", _evidence(noisy))[1] == "does not hold"


def test_k1_worse_failing_on_a_small_budget_is_not_at_this_budget():
    rows = {BREAKOUT: {"DT": _runs([30, 31, 29]), "DT K=1": _runs([30, 32, 29])}}
    ours, verdict, reason = _judge("atari-k1-worse", _evidence(rows))
    assert verdict == "not at this budget", reason
    assert "[2.5% of the paper's budget" in ours or "2.5%" in ours


def test_dt_vs_bc_is_capped_without_cql_and_needs_a_trained_bc():
    rows = {BREAKOUT: {"DT": _runs([60, 62, 58], **FULL), "BC": _runs([20, 22, 18], **FULL)}}
    assert _judge("atari-dt-vs-bc", _evidence(rows))[1] == "partly"
    # BC at the random policy's score did not train: nothing measured against it
    rows[BREAKOUT]["BC"] = _runs([0.5, -0.5, 0.0], std=5, **FULL)
    ours, verdict, reason = _judge("atari-dt-vs-bc", _evidence(rows))
    assert verdict == "not measured" and "Breakout BC did not train" in reason
    # BC at 2.5% of the paper's budget has not had its chance, whichever way it came out
    rows[BREAKOUT]["BC"] = _runs([20, 22, 18])
    assert _judge("atari-dt-vs-bc", _evidence(rows))[1] == "not at this budget"


def test_atari_claims_without_scale_or_runs_are_missing():
    assert _judge("atari-k1-worse", _evidence({}))[1] == "missing"
    rows = {BREAKOUT: {"DT": _runs([None]), "DT K=1": _runs([1.0])}}
    ours, verdict, reason = _judge("atari-k1-worse", _evidence(rows))
    assert verdict == "missing" and "no reference scores" in reason


def test_the_minatar_preset_is_a_cli_preset_and_lists_its_runs(tmp_path, capsys):
    assert main(["reproduce", "--preset", "minatar", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # per game: DT, K=1 and BC at both rates on seed 0 (the other seeds follow their choice)
    for game in ("breakout", "seaquest"):
        for row in ("dt", "dt-k1", "bc"):
            for lr in ("0.0003", "0.001"):
                assert f"atari/{game}/{row}/s0/lr{lr}:" in out
    assert "K=30" in out and "K=1" in out and "steps=1000" in out and "batch=64" in out


def test_dt_vs_bc_reads_cql_where_it_ran():
    # precise figures (episode std 5): "about as good" can be shown
    dt, bc = _runs([60, 61, 59], std=5, **FULL), _runs([20, 22, 18], **FULL)
    rows = {BREAKOUT: {"DT": dt, "BC": bc, "CQL": _runs([61, 60, 60], std=5, **FULL)}}
    ours, verdict, reason = _judge("atari-dt-vs-bc", _evidence(rows))
    assert verdict == "holds", reason
    assert "Breakout CQL 60.3" in ours and "CQL not run" not in ours
    # CQL far above the DT: the "comparable" part fails, the BC part holds
    rows[BREAKOUT]["CQL"] = _runs([95, 97, 93], **FULL)
    ours, verdict, reason = _judge("atari-dt-vs-bc", _evidence(rows))
    assert (
        verdict == "partly"
        and "about as good as CQL (within 5 points, noise counted): no" in reason
    )
    # CQL at the random policy's score did not train: nothing measured against it
    rows[BREAKOUT]["CQL"] = _runs([0.5, -0.5, 0.0], std=5, **FULL)
    ours, verdict, reason = _judge("atari-dt-vs-bc", _evidence(rows))
    assert verdict == "not measured" and "Breakout CQL did not train" in reason
    # CQL in one game only: at most partly, and the reason names the game without it
    rows[BREAKOUT]["CQL"] = _runs([61, 60, 60], std=5, **FULL)
    rows[SEAQUEST] = {"DT": dt, "BC": bc}
    ours, verdict, reason = _judge("atari-dt-vs-bc", _evidence(rows))
    assert verdict == "partly" and "Seaquest-v1 CQL: not run or failed" in reason


def test_cql_records_join_the_evidence_and_must_match_the_preset(tmp_path):
    from unicomp.reports.evidence import cql_records
    from unicomp.reports.presets import cql_folder, preset

    a = preset("minatar", tmp_path)["atari"]
    assert cql_records(tmp_path, a) == {}
    folder = cql_folder(tmp_path, BREAKOUT, 1)
    folder.mkdir(parents=True)
    record = {"steps": a["cql"]["steps"], "env": BREAKOUT, "normalized_score_mean": 40.0}
    (folder / "metrics.json").write_text(json.dumps(record))
    runs = cql_records(tmp_path, a)
    assert list(runs) == [BREAKOUT] and runs[BREAKOUT][0]["run"] == str(folder)
    (folder / "metrics.json").write_text(json.dumps({**record, "steps": 5}))
    with pytest.raises(UnicompError, match="a CQL run of 5 steps"):
        cql_records(tmp_path, a)


def test_d3rlpy_export_keeps_frames_as_bytes(tmp_path):
    """MinAtar's frames reach d3rlpy as uint8 (C, H, W), for its pixel scaler and encoder."""
    from unicomp.experiments.external import flat_arrays
    from unicomp.rl.trajectories import Episode, TrajectoryDataset

    rng = np.random.default_rng(0)
    eps = []
    for n in (3, 4):
        frames = (rng.random((n + 1, 4, 10, 10)) < 0.2).astype(np.uint8) * 255
        eps.append(Episode(frames, rng.integers(0, 3, n), np.ones(n, np.float32),
                           np.eye(n, dtype=bool)[-1], np.zeros(n, bool)))  # fmt: skip
    arrays = flat_arrays(TrajectoryDataset(eps, env_id=BREAKOUT))
    assert arrays["observations"].dtype == np.uint8
    assert arrays["observations"].shape == (7, 4, 10, 10)


@pytest.mark.slow
def test_discrete_cql_trains_on_minatar_frames_through_dt_external(tmp_path):
    """The three stages of `dt external` on frames: bytes exported, d3rlpy's DiscreteCQL with
    its frame settings and MinAtar's small encoder, scored by our evaluator."""
    from unicomp.experiments.external import D3RLPY_PYTHON

    if not D3RLPY_PYTHON.exists():
        pytest.skip(f"no {D3RLPY_PYTHON} (see docs/rl-experiments.md, CQL and IQL)")
    data, out = tmp_path / "random", tmp_path / "cql"
    assert main([*COLLECT, "--policy", "random", "--episodes", "4", "--out", str(data)]) == 0
    run = ["dt", "external", "--algo", "cql", "--data", str(data), "--out", str(out)]
    run += ["--steps", "20", "--eval-episodes", "2", "--eval-max-steps", "30", "--eval-envs", "2"]
    assert main(run) == 0
    assert np.load(out / "data.npz")["observations"].dtype == np.uint8
    log = json.loads((out / "d3rlpy_log.json").read_text())
    assert log["settings"].startswith("d3rlpy's 1%-DQN-Replay") and log["batch_size"] == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == "cql" and metrics["episodes"] == 2 and metrics["lr"] == 5e-5
