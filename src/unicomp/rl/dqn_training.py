"""Data like the DQN Replay Dataset, made here: the whole experience of one learning DQN, in
the order it was collected (Agarwal et al. 2020 logged every transition of their agents'
training runs; the DT paper trained on 1% of it, 500,000 transitions per game).

``train_dqn_stream`` trains a Stable-Baselines3 DQN in a discrete-action environment for
``steps`` environment steps, evaluates it every ``eval_every`` steps (greedy actions, the
same reset seeds each time; the uniform random policy is evaluated the same way first),
and writes every transition it made, cut into its episodes in order, as a data set
(``unicomp.rl.collect.write_collection``), with the final agent beside it
(``dqn-agent.zip``). The random policy's mean return and the final DQN's are the data set's
reference scores (``ref_min_score``/``ref_max_score``): a DT's normalised score is 0 at the
random policy and 100 at the DQN that made the data.

Settings: MinAtar's DQN (Young and Tian 2019, its examples/dqn.py) for MinAtar's games and any
other environment: one 3 x 3 convolution of 16 filters (stride 1) and a 128-unit layer for
small frames (the Nature-DQN network where frames are 36 pixels or more a side, a 64 x 64 MLP
for vector states); a replay of 100,000 transitions, batch 32, a gradient step every
environment step, the target network copied every 1,000 steps, discount 0.99, centred RMSProp
(learning rate 2.5e-4, alpha 0.95, eps 0.01), epsilon from 1.0 to 0.1 over the first 100,000
steps, 5,000 uniform random steps before learning, the Huber loss. Departures: SB3's DQN
clips gradients at norm 10 (MinAtar's does not); its replay samples uniformly, as MinAtar's
does. Training is not resumable: a run stopped before its end writes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unicomp.errors import UnicompError
from unicomp.models.decision_transformer import ConvEncoder
from unicomp.rl.collect import RandomPolicy, SB3Policy, write_collection
from unicomp.rl.evaluate import run_episodes
from unicomp.rl.sac_replay import check_at_least, training_env
from unicomp.rl.trajectories import Episode, TrajectoryDataset

AGENT_FILE = "dqn-agent.zip"
EVAL_SEED_OFFSET = 10_000  # evaluation episode i resets with seed + EVAL_SEED_OFFSET + i
PAPER_TRANSITIONS = 500_000  # the DT paper's 1% of DQN Replay, per game

# MinAtar's DQN (examples/dqn.py), as SB3's DQN takes it (module docstring).
MINATAR_DQN = {
    "buffer_size": 100_000,
    "batch_size": 32,
    "train_freq": 1,
    "gradient_steps": 1,
    "target_update_interval": 1_000,
    "gamma": 0.99,
    "learning_rate": 2.5e-4,
    "exploration_initial_eps": 1.0,
    "exploration_final_eps": 0.1,
    "exploration_steps": 100_000,  # SB3 takes it as a fraction of the run (below)
    "learning_starts": 5_000,
    "optimizer": "RMSprop(alpha=0.95, eps=0.01, centered=True)",
}


def _features_extractor():
    """MinAtar's network body as an SB3 features extractor (imported late: SB3 is optional)."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarNet(BaseFeaturesExtractor):
        """One 3 x 3 convolution of 16 filters, stride 1, ReLU, a 128-unit layer, ReLU; SB3
        scales uint8 frames to [0, 1] before it."""

        def __init__(self, observation_space, features_dim: int = 128):
            super().__init__(observation_space, features_dim)
            c, h, w = observation_space.shape
            self.net = nn.Sequential(
                nn.Conv2d(c, 16, 3, stride=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(16 * (h - 2) * (w - 2), features_dim),
                nn.ReLU(),
            )

        def forward(self, observations: torch.Tensor) -> torch.Tensor:
            return self.net(observations)

    return MinAtarNet


class _Stream:
    """Every transition the agent makes, in order, kept in arrays grown as needed."""

    def __init__(self, obs_shape: tuple[int, ...], obs_dtype, capacity: int):
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float64)
        self.n = 0
        self.ends: list[tuple[int, np.ndarray, bool]] = []  # (last step, final obs, truncated)

    def add(self, obs, action, reward, done: bool, info: dict) -> None:
        i = self.n
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.n += 1
        if done:
            truncated = bool(info.get("TimeLimit.truncated", False))
            self.ends.append((i, np.asarray(info["terminal_observation"]), truncated))

    def episodes(self, last_obs: np.ndarray) -> list[Episode]:
        """The stream cut into episodes; one still running at the end ends truncated, with
        ``last_obs`` (the observation the agent would act on next) as its final one."""
        ends = list(self.ends)
        if not ends or ends[-1][0] != self.n - 1:
            ends.append((self.n - 1, np.asarray(last_obs), True))
        out, start = [], 0
        for end, final, truncated in ends:
            steps = end + 1 - start
            terminations = np.zeros(steps, dtype=bool)
            truncations = np.zeros(steps, dtype=bool)
            (truncations if truncated else terminations)[-1] = True
            out.append(
                Episode(
                    observations=np.concatenate([self.obs[start : end + 1], final[None]]),
                    actions=self.actions[start : end + 1].copy(),
                    rewards=self.rewards[start : end + 1].copy(),
                    terminations=terminations,
                    truncations=truncations,
                )
            )
            start = end + 1
        return out


def train_dqn_stream(
    env_id: str,
    out: str | os.PathLike,
    steps: int = PAPER_TRANSITIONS,
    eval_every: int = 50_000,
    eval_episodes: int = 10,
    learning_starts: int = MINATAR_DQN["learning_starts"],
    seed: int = 0,
    n_envs: int = 10,
    max_episode_steps: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Train a DQN in ``env_id`` for ``steps`` steps and write its whole experience as a data
    set in ``out`` (module docstring). Returns the record written to ``out/collection.json``."""
    import gymnasium as gym

    out = Path(out)
    check_at_least(("--steps", steps, 1), ("--eval-every", eval_every, 1),
                   ("--eval-episodes", eval_episodes, 1),
                   ("--learning-starts", learning_starts, 0))  # fmt: skip
    env = training_env(env_id, out, max_episode_steps, gym.spaces.Discrete, "DQN")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks this small only lose time to more threads
    evaluate = _evaluator(env_id, eval_episodes, seed, n_envs, max_episode_steps)
    try:
        random_point = evaluate(RandomPolicy(env.action_space, seed), 0, t0)
        log(f"random policy: return {random_point['return_mean']:.2f}")
        model, stream, curve = _train(env, steps, eval_every, learning_starts, seed, evaluate,
                                      t0, log)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        env.close()
    last_obs = model._last_obs[0]
    dataset = TrajectoryDataset(
        stream.episodes(last_obs), env_id=env_id,
        source="unicomp dt collect dqn-replay --from-training",
    )  # fmt: skip
    ref = (random_point["return_mean"], curve[-1]["return_mean"])
    if ref[1] <= ref[0]:  # no scale to normalise by: scores stay raw returns
        log(f"the final DQN ({ref[1]:g}) did not score above the random policy ({ref[0]:g}): "
            "the data set has no reference scores")  # fmt: skip
    settings = {
        "suite": "dqn-replay",
        "from_training": "SB3 DQN with MinAtar's network and settings, its whole stream",
        "seed": seed,
        "max_episode_steps": max_episode_steps,
        "hyperparameters": _hyperparameters(model),
        "training_steps": model.num_timesteps,
        "eval_every": eval_every,
        "eval_episodes": eval_episodes,
        "eval_seed": seed + EVAL_SEED_OFFSET,
        "random_policy": random_point,
        "evaluations": curve,
        "reference_scores": None
        if ref[1] <= ref[0]
        else {
            "ref_min_score": ref[0],
            "ref_max_score": ref[1],
            "source": "the random policy and the final DQN, evaluated as in evaluations",
        },
        "paper_fraction": round(model.num_timesteps / PAPER_TRANSITIONS, 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "agent": AGENT_FILE,
    }
    what = f"the whole experience of a DQN learning for {model.num_timesteps} steps"
    return write_collection(
        dataset,
        out,
        settings,
        "dqn-replay",
        what,
        t0,
        {AGENT_FILE: model.save},
        ref=ref if ref[1] > ref[0] else None,
    )


def _evaluator(env_id: str, episodes: int, seed: int, n_envs: int, max_episode_steps):
    """evaluate(policy, step, t0) -> one point of the evaluation curve."""

    def evaluate(policy, step: int, t0: float) -> dict[str, Any]:
        result = run_episodes(env_id, policy, episodes, seed=seed + EVAL_SEED_OFFSET,
                              n_envs=min(n_envs, episodes), max_episode_steps=max_episode_steps,
                              progress=None)  # fmt: skip
        point = {"step": step, **result.summary(env_id)}
        point["seconds"] = round(time.perf_counter() - t0, 1)
        return point

    return evaluate


def _train(env, steps: int, eval_every: int, learning_starts: int, seed: int, evaluate, t0,
           log):  # fmt: skip
    """DQN trained in ``env`` for ``steps`` steps, evaluated every ``eval_every`` steps and
    at the end: (the model, its stream, the evaluations)."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    h = MINATAR_DQN
    image = len(env.observation_space.shape) == 3
    # the same rule as the DT's encoder: frames too small for the Nature-DQN convolutions
    small = image and min(env.observation_space.shape[1:]) < ConvEncoder.NATURE_MIN_SIDE
    policy_kwargs: dict[str, Any] = {
        "optimizer_class": torch.optim.RMSprop,
        "optimizer_kwargs": {"alpha": 0.95, "eps": 0.01, "centered": True},
    }
    if small:
        policy_kwargs.update(features_extractor_class=_features_extractor(), net_arch=[])
    model = DQN(
        "CnnPolicy" if image else "MlpPolicy",
        env,
        learning_rate=h["learning_rate"],
        buffer_size=min(h["buffer_size"], steps),
        learning_starts=learning_starts,
        batch_size=h["batch_size"],
        gamma=h["gamma"],
        train_freq=h["train_freq"],
        gradient_steps=h["gradient_steps"],
        target_update_interval=h["target_update_interval"],
        exploration_fraction=min(1.0, h["exploration_steps"] / steps),
        exploration_initial_eps=h["exploration_initial_eps"],
        exploration_final_eps=h["exploration_final_eps"],
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    space = env.observation_space
    stream = _Stream(space.shape, space.dtype, steps)
    agent = SB3Policy(model, None, name="dqn")
    curve: list[dict[str, Any]] = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            loc = self.locals
            stream.add(self.model._last_obs[0], int(loc["actions"][0]), float(loc["rewards"][0]),
                       bool(loc["dones"][0]), loc["infos"][0])  # fmt: skip
            n = self.model.num_timesteps
            if n % eval_every == 0 or n == steps:
                point = evaluate(agent, n, t0)
                point["exploration_rate"] = round(float(self.model.exploration_rate), 4)
                curve.append(point)
                log(f"step {n}: evaluation return {point['return_mean']:.2f} "
                    f"+- {point['return_std']:.2f}")  # fmt: skip
            return True

    model.learn(steps, callback=Record())
    if not curve or curve[-1]["step"] != model.num_timesteps:
        raise UnicompError(f"DQN stopped at step {model.num_timesteps} of {steps}")
    return model, stream, curve


def _hyperparameters(model) -> dict[str, Any]:
    """What the DQN was trained with, as SB3 holds it."""
    return {
        **{k: v for k, v in MINATAR_DQN.items() if k not in ("learning_starts",)},
        "buffer_size": model.buffer_size,
        "learning_starts": model.learning_starts,
        "exploration_fraction": model.exploration_fraction,
        "max_grad_norm": model.max_grad_norm,
        "network": type(model.q_net.features_extractor).__name__,
    }
