"""``dt collect --suite medium-replay --from-training`` (issue 12, point 1): SAC trained until the
medium level, its whole replay buffer written as a data set, its final agent rolled out as
medium. Tiny budgets on Hopper-v5: a few hundred environment steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unicomp.rl.sac_replay as sac_replay
from unicomp.cli import main
from unicomp.rl.minari_io import read_minari

pytest.importorskip("minari")
pytest.importorskip("stable_baselines3")

COLLECT = ["dt", "collect", "--env", "Hopper-v5", "--n-envs", "2"]
FROM_TRAINING = ["--suite", "medium-replay", "--from-training"]
TRAIN = [*COLLECT, *FROM_TRAINING, "--eval-episodes", "2"]
TINY_DT = ["--steps", "3", "--batch-size", "4", "--eval-every", "3", "--device", "cpu"]
TINY_DT += ["--n-layer", "1", "--hidden-size", "16", "--context", "4", "--no-progress"]
TINY_DT += ["--precision", "fp32", "--warmup-steps", "0", "--eval-episodes", "2"]
TINY_DT += ["--eval-max-steps", "10"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """400 steps, SAC learning from step 100, never reaching the medium level: the data set
    folder and the trained model (caught on its way to the writer)."""
    out = tmp_path_factory.mktemp("sac") / "replay"
    caught = {}
    real = sac_replay.replay_episodes

    def spy(model, env_id):
        caught["model"] = model
        return real(model, env_id)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sac_replay, "replay_episodes", spy)
        args = ["--max-train-steps", "400", "--eval-every", "200", "--learning-starts", "100"]
        assert main([*TRAIN, *args, "--medium-return", "1e6", "--out", str(out)]) == 0
    return out, caught["model"]


def test_the_data_set_is_the_whole_replay_buffer_in_order(learned):
    out, model = learned
    record = json.loads((out / "collection.json").read_text())
    assert record["stop_reason"] == "max_train_steps"
    assert record["training_steps"] == record["replay_buffer_size"] == record["steps"] == 400
    assert [e["step"] for e in record["evaluations"]] == [200, 400]
    assert record["hyperparameters"]["learning_starts"] == 100
    assert record["hyperparameters"]["batch_size"] == 256  # SB3's default, as the zoo's
    assert model.num_timesteps == model.replay_buffer.size() == 400
    data = read_minari(out)
    assert data.n_steps == 400
    buf = model.replay_buffer
    states = np.concatenate([e.states for e in data.episodes])
    following = np.concatenate([e.observations[1:] for e in data.episodes])
    actions = np.concatenate([e.actions for e in data.episodes])
    rewards = np.concatenate([e.rewards for e in data.episodes])
    np.testing.assert_allclose(states, buf.observations[:400, 0], rtol=1e-6)
    np.testing.assert_allclose(following, buf.next_observations[:400, 0], rtol=1e-6)
    np.testing.assert_allclose(actions, model.policy.unscale_action(buf.actions[:400, 0]))
    np.testing.assert_allclose(rewards, buf.rewards[:400, 0], rtol=1e-6)
    # cut where the environment ended them, in order: the Monitor's record of the episodes
    finished = list(model.ep_info_buffer)
    assert 3 <= len(finished) < 100  # all of them still in its window
    assert [len(e) for e in data.episodes[: len(finished)]] == [i["l"] for i in finished]
    returns = [e.total_return for e in data.episodes[: len(finished)]]
    np.testing.assert_allclose(returns, [i["r"] for i in finished], atol=1e-3)
    # the hopper falls (terminated); an episode still running at the stop ends truncated
    assert all(e.terminations[-1] for e in data.episodes[: len(finished)])
    assert len(data.episodes) - len(finished) in (0, 1)
    if len(data.episodes) > len(finished):
        assert data.episodes[-1].truncations[-1] and not data.episodes[-1].terminations[-1]
    for e in data.episodes:
        assert not e.terminations[:-1].any() and not e.truncations[:-1].any()
        assert e.terminations[-1] != e.truncations[-1]
    quantiles = record["return_quantiles"]
    assert list(quantiles) == ["0.1", "0.25", "0.5", "0.75", "0.9"]
    assert quantiles["0.5"] == pytest.approx(float(np.median(data.returns())))


def test_medium_reached_stops_then_dt_trains_and_the_agent_rolls_out_as_medium(tmp_path):
    replay = tmp_path / "replay"
    args = ["--max-train-steps", "600", "--eval-every", "150", "--medium-return", "-1000"]
    assert main([*TRAIN, *args, "--out", str(replay)]) == 0
    record = json.loads((replay / "collection.json").read_text())
    assert record["stop_reason"] == "medium_reached"
    assert record["training_steps"] == record["steps"] == 150
    assert len(record["evaluations"]) == 1 and record["medium_return"] == -1000
    assert record["hyperparameters"]["learning_starts"] == 10_000  # the zoo's
    assert (replay / "sac-agent.zip").is_file()
    run = tmp_path / "run"
    assert main(["dt", "train", "--data", str(replay), "--out", str(run), *TINY_DT]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    medium = tmp_path / "medium"
    suite = ["--suite", "medium", "--from-training", str(replay), "--episodes", "2"]
    assert main([*COLLECT, *suite, "--out", str(medium)]) == 0
    (part,) = json.loads((medium / "collection.json").read_text())["components"]
    assert part["agent"] == str(replay / "sac-agent.zip") and part["episodes"] == 2


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unicomp: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*TRAIN, "--medium-return", "nan"], "--medium-return must be a finite number, got nan"),
        ([*TRAIN, "--max-train-steps", "0"], "--max-train-steps must be at least 1, got 0"),
        (
            ["dt", "collect", "--env", "Hoper-v5", *FROM_TRAINING],
            "unknown environment 'Hoper-v5'",
        ),
        (
            ["dt", "collect", "--env", "Pendulum-v1", *FROM_TRAINING],
            "no expert return known for Pendulum-v1",
        ),
        ([*COLLECT, "--suite", "medium", "--from-training"], "--from-training without a folder"),
        ([*COLLECT, "--policy", "random", "--medium-return", "5"], "go with --suite medium-replay"),
        ([*TRAIN, "--episodes", "3"], "no --episodes or --noise"),
    ],
)
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    assert message in _one_error(capsys)
    assert not out.exists()


def test_a_medium_from_a_folder_without_an_agent_is_one_line(tmp_path, capsys):
    args = ["--suite", "medium", "--from-training", str(tmp_path), "--episodes", "2"]
    assert main([*COLLECT, *args, "--out", str(tmp_path / "medium")]) == 2
    assert f"no sac-agent.zip in {tmp_path}" in _one_error(capsys)


def test_an_interrupted_training_writes_nothing(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sac_replay, "run_episodes", interrupt)  # at the first evaluation
    out = tmp_path / "out"
    assert main([*TRAIN, "--eval-every", "50", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "unicomp: interrupted"
    assert list(out.iterdir()) == []
