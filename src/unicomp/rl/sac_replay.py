"""D4RL's medium-replay made the way D4RL made it: the whole replay buffer of one SAC agent
trained until it reaches the medium level (Fu et al. 2020, sec. 5: "all samples in the replay
buffer observed during training until the policy reaches the medium level of performance").

``train_until_medium`` trains a Stable-Baselines3 SAC agent with rl-baselines3-zoo's MuJoCo
hyperparameters (SB3's defaults, 10,000 random steps before learning), evaluates it every
``eval_every`` environment steps on ``eval_episodes`` episodes (deterministic actions, the
same reset seeds each time), stops at the first evaluation whose mean return reaches
``medium_return`` (or at ``max_train_steps``), and writes every transition the agent
collected until then, cut into its episodes in order, as a data set
(``unicomp.rl.collect.write_collection``), with the final agent beside it
(``sac-agent.zip``: the policy D4RL's medium rolls out, ``dt collect --suite medium
--from-training DIR``).

Departures from D4RL: SB3's SAC (not the implementation D4RL trained with), gymnasium's -v5
environments, the medium level is a third of our expert's return in -v5 (below), and
training is not resumable: a run stopped before its end writes nothing and starts again from
step 0.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicomp.errors import UnicompError
from unicomp.rl.collect import SB3Policy, check_out, env_name, write_collection
from unicomp.rl.envs import check_env_id, make_env
from unicomp.rl.evaluate import run_episodes
from unicomp.rl.trajectories import Episode, TrajectoryDataset

# The expert's mean return in -v5 (TQC, docs/rl-agents.md): D4RL's medium level is about a
# third of the expert's return. (D4RL's own reference expert, 3234 for hopper, would give 1078.)
EXPERT_RETURNS = {"Hopper": 2944.0, "HalfCheetah": 12091.0}

# rl-baselines3-zoo's hyperparams/sac.yml for the MuJoCo environments (Hopper, HalfCheetah,
# Walker2d, Ant: "mujoco-defaults"): SB3's SAC defaults but for learning_starts 10000.
ZOO_LEARNING_STARTS = 10_000

AGENT_FILE = "sac-agent.zip"
EVAL_SEED_OFFSET = 10_000  # evaluation episode i resets with seed + EVAL_SEED_OFFSET + i


def default_medium_return(env_id: str) -> float:
    """A third of the expert's return in ``env_id`` (EXPERT_RETURNS); UnicompError elsewhere."""
    name = env_name(env_id)
    if name not in EXPERT_RETURNS:
        raise UnicompError(
            f"no expert return known for {env_id} (known: "
            f"{', '.join(f'{e}-v5' for e in EXPERT_RETURNS)}); pass --medium-return R"
        )
    return EXPERT_RETURNS[name] / 3


def _check_settings(medium_return: float | None, max_train_steps: int, eval_every: int,
                    eval_episodes: int, learning_starts: int) -> None:  # fmt: skip
    if medium_return is not None and not math.isfinite(medium_return):
        raise UnicompError(f"--medium-return must be a finite number, got {medium_return}")
    check_at_least(("--max-train-steps", max_train_steps, 1), ("--eval-every", eval_every, 1),
                   ("--eval-episodes", eval_episodes, 1),
                   ("--learning-starts", learning_starts, 0))  # fmt: skip


def check_at_least(*flags: tuple[str, int, int]) -> None:
    """One line for the first (flag, value, lowest allowed) whose value is too low."""
    for flag, value, low in flags:
        if value < low:
            raise UnicompError(f"{flag} must be at least {low}, got {value}")


def training_env(env_id: str, out: Path, max_episode_steps: int | None, space, algo: str):
    """The environment an agent learns in, checked before anything is written: a known id,
    the action space ``algo`` needs (a gymnasium space class), an ``out`` that takes a data set."""
    check_env_id(env_id)
    limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    env = make_env(env_id, **limit)
    if not isinstance(env.action_space, space):
        env.close()
        kind = "continuous" if space.__name__ == "Box" else "discrete"
        raise UnicompError(f"{algo} needs {kind} actions; {env_id} has {env.action_space}")
    check_out(out)
    return env


def train_until_medium(
    env_id: str,
    out: str | os.PathLike,
    medium_return: float | None = None,
    max_train_steps: int = 1_000_000,
    eval_every: int = 5_000,
    eval_episodes: int = 10,
    learning_starts: int = ZOO_LEARNING_STARTS,
    seed: int = 0,
    n_envs: int = 16,
    max_episode_steps: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Train SAC in ``env_id`` until the medium level; write its replay buffer as a data set in
    ``out`` (see the module docstring). ``medium_return``: the mean evaluation return that
    stops training (default: a third of the expert's, :func:`default_medium_return`).
    Returns the record written to ``out/collection.json``."""
    import gymnasium as gym

    out = Path(out)
    _check_settings(medium_return, max_train_steps, eval_every, eval_episodes, learning_starts)
    check_env_id(env_id)
    source = "--medium-return"
    if medium_return is None:
        medium_return = default_medium_return(env_id)
        source = f"a third of the expert's {3 * medium_return:g} (TQC in -v5, docs/rl-agents.md)"
    env = training_env(env_id, out, max_episode_steps, gym.spaces.Box, "SAC")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks this small only lose time to more threads
    try:
        model, curve, stop = _train(env, env_id, medium_return, max_train_steps, eval_every,
                                    eval_episodes, learning_starts, seed, n_envs,
                                    max_episode_steps, log)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        env.close()
    dataset = replay_episodes(model, env_id)
    settings = {
        "suite": "medium-replay",
        "from_training": "SB3 SAC, replay buffer up to the medium level",
        "seed": seed,
        "max_episode_steps": max_episode_steps,
        "hyperparameters": _hyperparameters(model),
        "medium_return": medium_return,
        "medium_return_source": source,
        "max_train_steps": max_train_steps,
        "eval_every": eval_every,
        "eval_episodes": eval_episodes,
        "eval_seed": seed + EVAL_SEED_OFFSET,
        "training_steps": model.num_timesteps,
        "replay_buffer_size": model.replay_buffer.size(),
        "stop_reason": stop,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "evaluations": curve,
        "agent": AGENT_FILE,
    }
    what = f"the replay buffer of SAC ({model.num_timesteps} steps, {stop})"
    return write_collection(
        dataset, out, settings, "medium-replay", what, t0, {AGENT_FILE: model.save}
    )


def _train(env, env_id: str, medium_return: float, max_train_steps: int, eval_every: int,
           eval_episodes: int, learning_starts: int, seed: int, n_envs: int,
           max_episode_steps: int | None, log):  # fmt: skip
    """SAC trained in ``env`` and evaluated every ``eval_every`` steps until the medium level
    or ``max_train_steps``: (the model, the evaluations, why it stopped)."""
    from stable_baselines3 import SAC

    t0 = time.perf_counter()
    # buffer_size: every step of the run fits, so nothing is overwritten (the zoo's 1M for its
    # 1M steps); the rest as the zoo has it: SB3's defaults.
    model = SAC("MlpPolicy", env, buffer_size=max_train_steps, learning_starts=learning_starts,
                seed=seed, device="cpu", verbose=0)  # fmt: skip
    agent = SB3Policy(model, None, name="sac")
    curve: list[dict[str, Any]] = []
    while model.num_timesteps < max_train_steps:
        # learn() in pieces: each stores its every step and does its every gradient step, so
        # the agent evaluated is the final one and the buffer holds all it collected
        steps = min(eval_every, max_train_steps - model.num_timesteps)
        model.learn(steps, reset_num_timesteps=model.num_timesteps == 0)
        result = run_episodes(env_id, agent, eval_episodes, seed=seed + EVAL_SEED_OFFSET,
                              n_envs=min(n_envs, eval_episodes),
                              max_episode_steps=max_episode_steps)  # fmt: skip
        point = {"step": model.num_timesteps, **result.summary(env_id)}
        point["seconds"] = round(time.perf_counter() - t0, 1)
        curve.append(point)
        log(
            f"step {model.num_timesteps}: evaluation return {point['return_mean']:.1f} "
            f"+- {point['return_std']:.1f} (medium: {medium_return:g})"
        )
        if point["return_mean"] >= medium_return:
            return model, curve, "medium_reached"
    return model, curve, "max_train_steps"


def _hyperparameters(model) -> dict[str, Any]:
    """What the SAC agent was trained with, as SB3 holds it."""
    return {
        "learning_rate": model.learning_rate,
        "buffer_size": model.buffer_size,
        "learning_starts": model.learning_starts,
        "batch_size": model.batch_size,
        "tau": model.tau,
        "gamma": model.gamma,
        "train_freq": model.train_freq.frequency,
        "gradient_steps": model.gradient_steps,
        "ent_coef": "auto",
        "net_arch": model.policy.net_arch,
    }


def replay_episodes(model, env_id: str) -> TrajectoryDataset:
    """Every transition in ``model``'s replay buffer, in the order it was collected, cut into
    episodes where the environment ended them (terminated, or truncated by the time limit);
    a last episode still running when training stopped ends truncated. Actions as the
    environment received them (SB3 stores them scaled to [-1, 1])."""
    buf = model.replay_buffer
    n = buf.size()
    if buf.full and buf.pos != 0:  # buffer_size holds every step: this cannot happen
        raise UnicompError(f"the replay buffer wrapped around after {n} steps; transitions lost")
    obs, nxt = buf.observations[:n, 0], buf.next_observations[:n, 0]
    actions = model.policy.unscale_action(buf.actions[:n, 0])
    rewards = buf.rewards[:n, 0].astype(np.float64)
    done, timeout = buf.dones[:n, 0] > 0, buf.timeouts[:n, 0] > 0
    ends = list(np.flatnonzero(done))
    if not ends or ends[-1] != n - 1:
        ends.append(n - 1)  # the episode training stopped in
    episodes, start = [], 0
    for end in ends:
        steps = end + 1 - start
        terminations = np.zeros(steps, dtype=bool)
        truncations = np.zeros(steps, dtype=bool)
        terminations[-1] = done[end] and not timeout[end]
        truncations[-1] = not terminations[-1]
        episodes.append(
            Episode(
                observations=np.concatenate([obs[start : end + 1], nxt[end : end + 1]]),
                actions=actions[start : end + 1],
                rewards=rewards[start : end + 1],
                terminations=terminations,
                truncations=truncations,
            )
        )
        start = end + 1
    return TrajectoryDataset(
        episodes, env_id=env_id, source="unicomp dt collect medium-replay --from-training"
    )
