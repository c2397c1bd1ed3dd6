"""Vectorised rollouts with seeds, the D4RL normalised score, and the Decision Transformer as
an agent.

``run_episodes`` plays many episodes at once: a gymnasium vector environment of ``n_envs``
copies runs a group of episodes in lockstep, and the agent acts on the whole batch of
observations with one call. Episode ``i`` starts from ``reset(seed=seed + i)``, so a result is
a function of (agent, seed, episodes) and, for agents that draw random numbers, ``n_envs``.
Departure from the official DT code, which evaluates one environment at a time with no seeds.

Episodes of one group end at different steps; an environment whose episode has ended keeps
being stepped (gymnasium resets it) until the whole group is done, and what it does is
ignored. That wastes some environment steps but keeps every row of a batched agent (the DT's
key/value cache) at the same timestep, which makes batching exact and simple.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from unicomp.rl.atari import ATARI_REF_SCORES, ATARI_TARGETS, is_minatar
from unicomp.rl.envs import make_vector_env
from unicomp.rl.trajectories import Episode

# D4RL reference returns (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE, the same for every
# data set of an environment): a random policy and an expert (SAC), measured in the
# mujoco-py -v2/-v3 environments. We run gymnasium's -v5 environments, whose dynamics differ
# slightly (newer MuJoCo), so scores are comparable with the papers' only approximately.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}


# The official gym code's evaluation targets (gym/experiment.py: env_targets).
PAPER_TARGETS: dict[str, tuple[float, ...]] = {
    "hopper": (3600.0, 1800.0),
    "halfcheetah": (12000.0, 6000.0),
    "walker2d": (5000.0, 2500.0),
}


# Environments scored by success: an episode succeeds when its return reaches this.
SUCCESS_RETURNS: dict[str, float] = {"keytodoor": 1.0}


def _env_key(env_id: str) -> str:
    """The key of our tables ("hopper", "breakout"); MinAtar's games are not the ALE games
    of the same names (other scores, other targets): "minatar/breakout"."""
    key = env_id.split("-")[0].split("/")[-1].split(":")[-1].lower()
    return f"minatar/{key}" if is_minatar(env_id) else key


def default_targets(env_id: str | None, best: float, typical: float) -> tuple[float, ...]:
    """The paper's targets for its environments (gym: two; Atari: one per game); elsewhere
    two from the data: its best episode return and the midpoint between that and the data's
    median return ``typical`` (the paper's gym pairs are about an expert's return and half of
    it). The midpoint lies within the data's returns whatever their sign: Pendulum returns
    with best -0.76 and median -233 give -0.76 and -117, where half the best (-0.38) would
    ask for more than any episode got. One target where the two coincide (every return equal)."""
    if env_id and _env_key(env_id) in PAPER_TARGETS:
        return PAPER_TARGETS[_env_key(env_id)]
    if env_id and _env_key(env_id) in ATARI_TARGETS:
        return (ATARI_TARGETS[_env_key(env_id)],)
    middle = (best + typical) / 2
    return (best,) if middle == best else (best, middle)


def reference_scores(env_id: str | None) -> tuple[float, float] | None:
    """(random, expert) returns for "Hopper-v5", "hopper", "hopper-medium-v2", ...; (random,
    human) for the paper's Atari games ("ALE/Breakout-v5", "breakout"); else None."""
    if not env_id:
        return None
    key = _env_key(env_id)
    return D4RL_REF_SCORES.get(key) or ATARI_REF_SCORES.get(key)


def score_reference(env_id: str | None, metadata: dict | None = None) -> dict | None:
    """The (random, expert) returns that normalise a score, and where they come from: the
    data set's own ``ref_min_score``/``ref_max_score`` (Minari's metadata, what
    ``minari.get_normalized_score`` reads) where it has both, else our table for the
    environment (:func:`reference_scores`); None where neither has them."""
    meta = metadata or {}
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        lo, hi = float(meta["ref_min_score"]), float(meta["ref_max_score"])
        source = "data set metadata (ref_min_score, ref_max_score)"
    elif reference_scores(env_id) is not None:
        lo, hi = reference_scores(env_id)
        source = f"built-in table ({_env_key(env_id)})"
    else:
        return None
    return {"ref_min_score": lo, "ref_max_score": hi, "source": source}


def normalized_score(
    returns: Any, env_id: str | None, ref: tuple[float, float] | None = None
) -> np.ndarray | None:
    """100 * (return - random) / (expert - random), as D4RL's ``get_normalized_score`` x 100;
    for Atari, (expert) is the human reference: the paper's gamer-normalised score. ``ref``:
    (random, expert) to use instead of our table's for ``env_id``."""
    ref = ref or reference_scores(env_id)
    if ref is None:
        return None
    lo, hi = ref
    return 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)


class Agent(Protocol):
    """What ``run_episodes`` drives. ``reset(n)`` starts n parallel episodes; ``act`` maps
    observations (n, *obs) to actions (n, act_dim) or (n,); ``observe`` receives the rewards
    (n,) of the step just taken (the DT subtracts them from its return-to-go)."""

    def reset(self, n: int) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...

    def observe(self, rewards: np.ndarray) -> None: ...


@dataclass
class RolloutResult:
    returns: np.ndarray  # (episodes,)
    lengths: np.ndarray  # (episodes,)
    seeds: list[int]
    episodes: list[Episode] = field(default_factory=list)  # when recorded

    def summary(
        self, env_id: str | None = None, ref: tuple[float, float] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "episodes": len(self.returns),
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "return_min": float(self.returns.min()),
            "return_max": float(self.returns.max()),
            "length_mean": float(self.lengths.mean()),
        }
        norm = normalized_score(self.returns, env_id, ref)
        if norm is not None:
            out["normalized_score_mean"] = float(norm.mean())
            out["normalized_score_std"] = float(norm.std())
        if env_id and _env_key(env_id) in SUCCESS_RETURNS:
            out["success_rate"] = float(np.mean(self.returns >= SUCCESS_RETURNS[_env_key(env_id)]))
        return out


def run_episodes(
    env_id: str,
    agent: Agent,
    episodes: int,
    seed: int = 0,
    n_envs: int = 16,
    max_episode_steps: int | None = None,
    record: bool = False,
    vectorization: str = "sync",
    env_kwargs: dict | None = None,
    progress: str | None = None,
) -> RolloutResult:
    """Play ``episodes`` episodes in groups of up to ``n_envs``; see the module docstring.
    ``progress``: the label of a progress bar over the episodes (None: no bar)."""
    from unicomp.tracking import progress_bar

    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    recorded: list[Episode] = []
    bar = progress_bar(episodes, progress or "", progress is not None, unit="episode")
    for first in range(0, episodes, n_envs):
        n = min(n_envs, episodes - first)
        envs = make_vector_env(env_id, n, max_episode_steps, vectorization, env_kwargs)
        try:
            group = _run_group(envs, agent, [seed + first + j for j in range(n)], record, bar)
        finally:
            envs.close()
        returns[first : first + n], lengths[first : first + n] = group[0], group[1]
        recorded.extend(group[2])
    bar.close()
    return RolloutResult(returns, lengths, [seed + i for i in range(episodes)], recorded)


def _run_group(envs, agent: Agent, seeds: list[int], record: bool, bar):
    n = len(seeds)
    obs, _ = envs.reset(seed=seeds)
    agent.reset(n)
    active = np.ones(n, dtype=bool)
    ret = np.zeros(n)
    length = np.zeros(n, dtype=np.int64)
    # Recording keeps one (n, ...) array per step and slices episodes out at the end.
    hist: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "term", "trunc")}
    final_obs = np.zeros_like(obs)
    while active.any():
        actions = np.asarray(agent.act(obs))
        next_obs, rewards, term, trunc, _ = envs.step(actions)
        rewards = np.asarray(rewards, dtype=np.float64)
        agent.observe(rewards)
        ret[active] += rewards[active]
        length[active] += 1
        if record:
            for key, value in zip(hist, (obs, actions, rewards, term, trunc), strict=True):
                hist[key].append(np.array(value, copy=True))
        done = active & (np.asarray(term) | np.asarray(trunc))
        final_obs[done] = next_obs[done]
        active &= ~done
        obs = next_obs
        bar.set_postfix_str(f"step {int(length.max())}", refresh=False)
        bar.update(int(done.sum()))  # redraws only when its interval has passed
    episodes = []
    if record:
        stacked = {k: np.stack(v, axis=1) for k, v in hist.items()}  # (n, steps, ...)
        for j in range(n):
            T = int(length[j])
            episodes.append(
                Episode(
                    observations=np.concatenate([stacked["obs"][j, :T], final_obs[j : j + 1]]),
                    actions=stacked["act"][j, :T],
                    rewards=stacked["rew"][j, :T],
                    terminations=stacked["term"][j, :T].astype(bool),
                    truncations=stacked["trunc"][j, :T].astype(bool),
                )
            )
    return ret, length, episodes


# --- the Decision Transformer as an agent ---------------------------------------------------
class DTAgent:
    """Acts with a trained Decision Transformer (paper sec. 3, "at test time"): start from a
    target return, feed (R, s), take the predicted action, subtract each reward received from
    the return-to-go, repeat. Uses the model's key/value cache (``DecisionTransformer.step``).

    state_mean/state_std: the training data's statistics (states are normalised as in
    training); rtg_scale: the scale returns-to-go were divided by in training.
    sample: discrete actions drawn from the predicted distribution (the official Atari
    evaluation) with a generator seeded by ``seed``, instead of the most likely action.
    """

    def __init__(
        self,
        model,
        target_return: float,
        state_mean: Sequence[float] | np.ndarray | None,
        state_std: Sequence[float] | np.ndarray | None,
        rtg_scale: float,
        device: str | torch.device = "cpu",
        window: str = "exact",
        sample: bool = False,
        seed: int = 0,
    ):
        self.model, self.target_return, self.rtg_scale = model, target_return, rtg_scale
        self.device = torch.device(device)
        self.window = window
        self.sample = sample and model.config.discrete
        self.generator = torch.Generator().manual_seed(seed)
        self.state_mean = None if state_mean is None else torch.as_tensor(state_mean).float()
        self.state_std = None if state_std is None else torch.as_tensor(state_std).float()
        self.rollout = None

    def reset(self, n: int) -> None:
        self.model.eval()
        self.rollout = self.model.start(n, window=self.window)
        self.rtg = torch.full((n, 1), self.target_return / self.rtg_scale)
        self.t = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(obs)
        if obs.dtype != np.uint8:  # image frames stay uint8: the model scales them on its device
            s = s.float()
            if self.state_mean is not None:
                s = (s - self.state_mean) / self.state_std
        # Timesteps past the embedding table reuse its last row, as in training.
        t = min(self.t, self.model.config.max_ep_len - 1)
        timestep = torch.full((len(s),), t, dtype=torch.long)
        out = self.model.step(
            self.rollout, self.rtg.to(self.device), s.to(self.device), timestep.to(self.device)
        )
        if self.sample:
            probs = torch.softmax(out.float().cpu(), -1)
            action = torch.multinomial(probs, 1, generator=self.generator)[:, 0].to(out.device)
        elif self.model.config.discrete:
            action = out.argmax(-1)
        else:
            action = out
        self.model.record_action(self.rollout, action)
        self.t += 1
        return action.cpu().numpy() if self.model.config.discrete else action.float().cpu().numpy()

    def observe(self, rewards: np.ndarray) -> None:
        # Paper sec. 3: R_{t+1} = R_t - r_t (no discount), in the scaled units of training.
        r = torch.as_tensor(rewards, dtype=torch.float32)[:, None]
        self.rtg = self.rtg - r / self.rtg_scale


def evaluate_dt(
    model,
    env_id: str,
    target_return: float | None,
    state_mean: Sequence[float] | np.ndarray | None,
    state_std: Sequence[float] | np.ndarray | None,
    rtg_scale: float,
    episodes: int = 10,
    seed: int = 0,
    n_envs: int = 16,
    max_episode_steps: int | None = None,
    window: str = "exact",
    delayed_reward: bool = False,
    sample: bool = False,
    ref_scores: tuple[float, float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean/std return and normalised score of the DT conditioned on ``target_return``
    (None for policies that read no returns: BC). ``delayed_reward``: the agent observes the
    rewards of unicomp.rl.trajectories.delay_rewards (none before the episode ends).
    ``sample``: discrete actions drawn from the predicted distribution (see DTAgent).
    ``ref_scores``: (random, expert) returns of the score (default: our table's).
    ``progress``: a bar over the episodes on stderr (unicomp.tracking.progress_bar)."""
    device = next(model.parameters()).device
    agent: Agent = DTAgent(
        model,
        target_return or 0.0,
        state_mean,
        state_std,
        rtg_scale,
        device,
        window,
        sample=sample,
        seed=seed,
    )
    if delayed_reward:
        agent = DelayedRewardAgent(agent)
    label = f"evaluate {env_id}" + ("" if target_return is None else f" @{target_return:g}")
    result = run_episodes(
        env_id,
        agent,
        episodes,
        seed=seed,
        n_envs=n_envs,
        max_episode_steps=max_episode_steps,
        progress=label if progress else None,
    )
    out = {"target_return": target_return, "seed": seed, **result.summary(env_id, ref_scores)}
    if sample and model.config.discrete:
        out["sampled_actions"] = True
    return out


class DelayedRewardAgent:
    """Wraps an agent so that it observes the delayed reward of ``delay_rewards`` while
    acting: zero at every step. The sum would arrive with the episode's last step, after
    which the agent does not act again in that episode, so zeros throughout are exact. The
    rollout still scores the environment's own rewards (their sum is the same)."""

    def __init__(self, agent):
        self.agent = agent

    def reset(self, n: int) -> None:
        self.agent.reset(n)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.agent.act(obs)

    def observe(self, rewards: np.ndarray) -> None:
        self.agent.observe(np.zeros_like(rewards))
