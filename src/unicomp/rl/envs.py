"""Small gymnasium environments for the Decision Transformer paper's credit-assignment and
path-finding experiments, and ``make_env``, the one way unicomp makes an environment (ours,
gymnasium's, Atari with the paper's preprocessing, a data set's recorded spec). Importing this
module registers ours:

``KeyToDoor-v0`` (paper sec. 5.5, after Mesnard et al. 2020): three rooms in turn.
  Phase 1, a room with a key: stepping onto the key picks it up. Phase 2, an empty room.
  Phase 3, a room with a door: reaching the door ends the episode with reward 1 if the key
  was picked up in phase 1, else 0. Phases 1 and 2 last a fixed number of steps; phase 3
  ends at the door or after its steps. Whether the key was picked up is not in the
  observation after phase 1, so the reward at the end depends on an action many steps back.
  Departure: the paper's rooms are gridworld images (with a conv encoder); ours are small
  grids (``size`` x ``size``) observed as 11 numbers, scaled by size - 1: the agent's row and
  column; key visible (phase 1, until picked up), key row and column minus the agent's;
  door visible (phase 3), door offset likewise; the phase, one-hot. Offsets make "walk to
  the key" a simple function to learn from a few hundred random episodes (one-hot cells did
  not: the DT stayed at random success with 1,000 episodes); what the experiment tests,
  credit assignment over the empty room, is unchanged. Actions: 0 up, 1 down, 2 left,
  3 right (a wall keeps the agent in place).
  A uniform random policy succeeds in about 7% of episodes with the defaults (size 3, phases
  of 4, 8 and 4 steps); the paper reports 3.1% for its random policy. (With size 4 and phases
  of 8 steps, 1,500 training steps of a 2-layer DT on 2,000 random episodes learned to walk
  to the door but not to the key: too little signal for a CPU budget.)

``GraphShortestPath-v0`` (paper sec. 5.4 / figure 1): a fixed random graph (Erdos-Renyi with
  ``edge_prob``, plus a random spanning tree so that it is connected; ``graph_seed``) and a
  goal node. Each episode starts at a random node other than the goal. The observation is
  the current node, one-hot; action i moves to the current node's (i mod degree)-th
  neighbour (sorted), so a uniform random action is a step of a random walk (departure: the
  paper does not state its action encoding). Reward -1 per step that does not reach the
  goal, 0 for the step that does (which ends the episode); ``max_steps`` cuts the walk.
  ``shortest_path_lengths()`` gives the true distances (breadth-first search).
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from unicomp.errors import UnicompError
from unicomp.rl.atari import (
    atari_env_id,
    is_minatar,
    make_atari_env,
    register_ale,
    register_minatar,
)

_MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])


class KeyToDoor(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, size: int = 3, phase_steps: tuple[int, int, int] = (4, 8, 4)):
        if size < 2:
            raise ValueError(f"size must be at least 2, got {size}")
        if len(phase_steps) != 3 or min(phase_steps) < 1:
            raise ValueError(f"phase_steps must be three positive lengths, got {phase_steps}")
        self.size, self.phase_steps = size, tuple(int(n) for n in phase_steps)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(11,), dtype=np.float32)
        self.action_space = spaces.Discrete(4)

    def _random_cell(self, avoid: np.ndarray | None = None) -> np.ndarray:
        while True:
            cell = self.np_random.integers(0, self.size, size=2)
            if avoid is None or not np.array_equal(cell, avoid):
                return cell

    def _enter(self, phase: int) -> None:
        self.phase, self.t_phase = phase, 0
        self.agent = self._random_cell()
        if phase == 0:
            self.key = self._random_cell(self.agent)
        if phase == 2:
            self.door = self._random_cell(self.agent)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(11, dtype=np.float32)
        scale = self.size - 1
        obs[0:2] = self.agent / scale
        if self.phase == 0 and not self.has_key:
            obs[2], obs[3:5] = 1.0, (self.key - self.agent) / scale
        if self.phase == 2:
            obs[5], obs[6:8] = 1.0, (self.door - self.agent) / scale
        obs[8 + self.phase] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.has_key = False
        self._enter(0)
        return self._obs(), {}

    def step(self, action):
        move = _MOVES[int(action)]
        self.agent = np.clip(self.agent + move, 0, self.size - 1)
        self.t_phase += 1
        reward, terminated = 0.0, False
        if self.phase == 0 and not self.has_key and np.array_equal(self.agent, self.key):
            self.has_key = True
        if self.phase == 2 and np.array_equal(self.agent, self.door):
            reward, terminated = float(self.has_key), True
        elif self.t_phase >= self.phase_steps[self.phase]:
            if self.phase == 2:
                terminated = True  # the episode's end by design, not a time limit
            else:
                self._enter(self.phase + 1)
        return self._obs(), reward, terminated, False, {"has_key": self.has_key}


class GraphShortestPath(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        n_nodes: int = 20,
        edge_prob: float = 0.1,
        graph_seed: int = 0,
        goal: int = 0,
        max_steps: int = 40,
    ):
        if n_nodes < 2 or not 0 <= goal < n_nodes:
            raise ValueError(f"need n_nodes >= 2 and 0 <= goal < n_nodes, got {n_nodes}, {goal}")
        rng = np.random.default_rng(graph_seed)
        adj = rng.random((n_nodes, n_nodes)) < edge_prob
        adj = np.triu(adj, 1)
        order = rng.permutation(n_nodes)  # a random spanning tree: each node joins an earlier one
        for i in range(1, n_nodes):
            j = order[rng.integers(0, i)]
            adj[min(order[i], j), max(order[i], j)] = True
        adj = adj | adj.T
        self.neighbours = [np.flatnonzero(adj[i]) for i in range(n_nodes)]
        self.n_nodes, self.goal, self.max_steps = n_nodes, goal, max_steps
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_nodes,), dtype=np.float32)
        self.action_space = spaces.Discrete(max(len(nb) for nb in self.neighbours))

    def shortest_path_lengths(self) -> np.ndarray:
        """Steps from every node to the goal (breadth-first search)."""
        dist = np.full(self.n_nodes, -1)
        dist[self.goal] = 0
        queue = deque([self.goal])
        while queue:
            u = queue.popleft()
            for v in self.neighbours[u]:
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        return dist

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n_nodes, dtype=np.float32)
        obs[self.node] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.node = int(self.np_random.integers(0, self.n_nodes - 1))
        if self.node >= self.goal:
            self.node += 1  # uniform over the nodes other than the goal
        self.start, self.t = self.node, 0
        return self._obs(), {"start": self.start}

    def step(self, action):
        nb = self.neighbours[self.node]
        self.node = int(nb[int(action) % len(nb)])
        self.t += 1
        at_goal = self.node == self.goal
        truncated = not at_goal and self.t >= self.max_steps
        return self._obs(), 0.0 if at_goal else -1.0, at_goal, truncated, {"start": self.start}


class MinAtarFrames(gym.ObservationWrapper):
    """MinAtar's (10, 10, C) booleans as (C, 10, 10) uint8 frames, 0 or 255 (unicomp.rl.atari)."""

    def __init__(self, env):
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = spaces.Box(0, 255, (c, h, w), np.uint8)

    def observation(self, observation):
        return np.ascontiguousarray(np.moveaxis(observation, -1, 0), dtype=np.uint8) * 255


def make_minatar_env(env_id: str, max_episode_steps: int | None = None, **kwargs):
    """A MinAtar game with MinAtar's defaults: observations (C, 10, 10) uint8 in {0, 255}."""
    from gymnasium.wrappers import TimeLimit

    env = MinAtarFrames(gym.make(env_id, **kwargs))
    return env if max_episode_steps is None else TimeLimit(env, max_episode_steps)


def _register() -> None:
    for env_id, entry in (
        ("KeyToDoor-v0", "unicomp.rl.envs:KeyToDoor"),
        ("GraphShortestPath-v0", "unicomp.rl.envs:GraphShortestPath"),
    ):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry)


_register()


def make_env(env_id: str, **kwargs):
    """``gymnasium.make`` with MuJoCo's warnings routed to Python's (see below); our own
    environments (unicomp.rl.envs: KeyToDoor-v0, ...) are registered first. Atari ids
    (``ALE/Breakout-v5``, ``breakout``) get the paper's preprocessing, MinAtar ids
    (``MinAtar/Breakout-v1``) unicomp's frame layout (unicomp.rl.atari)."""

    if is_minatar(env_id):
        check_env_id(env_id)
        return make_minatar_env(env_id, **kwargs)
    if atari_env_id(env_id):
        check_env_id(atari_env_id(env_id))
        return make_atari_env(env_id, **kwargs)
    _route_mujoco_warnings()
    check_env_id(env_id)
    return gym.make(env_id, **kwargs)


def check_env_id(env_id: str) -> None:
    """Raise a one-line UnicompError for an id gymnasium's registry does not hold, naming
    the close matches (``Hoper-v5``: Hopper-v5, ...)."""
    import difflib

    if ":" in env_id:  # "module:Env-v0": gymnasium imports the module first
        return
    if env_id.startswith("ALE/"):
        register_ale()
    if is_minatar(env_id):
        register_minatar()
    try:
        gym.spec(env_id)
    except gym.error.UnregisteredEnv as err:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=4, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else str(err)
        raise UnicompError(
            f"unknown environment {env_id!r} (not in gymnasium's registry); {hint}"
        ) from None
    except gym.error.Error:  # e.g. an id without -vN, which gymnasium.make resolves
        return


def _route_mujoco_warnings() -> None:
    """MuJoCo writes its warnings to MUJOCO_LOG.TXT in the working directory and stderr. We
    send them to Python's warnings instead, so a rollout leaves no file behind; deprecation
    notes about gymnasium's model files (e.g. 'settotalmass', once per environment made) go
    to the debug log, since users can do nothing about them. Simulation warnings (NaN or
    huge accelerations) stay visible. Only where no handler is installed yet, and only where
    MuJoCo is installed (without it no environment can warn through it)."""
    try:
        import mujoco
    except ImportError:  # the rl extra's MuJoCo is optional for the other environments
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    if "deprecated" in message:
        logging.getLogger("unicomp.mujoco").debug("MuJoCo: %s", message)
    else:
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


def make_vector_env(
    env_id: str,
    n: int,
    max_episode_steps: int | None = None,
    vectorization: str = "sync",
    env_kwargs: dict | None = None,
):
    """``n`` copies of ``env_id`` in a gymnasium vector env (sync: one process; async: one
    subprocess each, worth it only for slow environments)."""

    _route_mujoco_warnings()
    kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    fns: list[Callable] = [lambda: make_env(env_id, **kwargs) for _ in range(n)]
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(fns)
    if vectorization != "sync":
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    return gym.vector.SyncVectorEnv(fns)


def register_env_spec(spec_json: str) -> None:
    """Register a gymnasium env spec (``EnvSpec.to_json()``, as Minari stores it) unless its
    id is registered already: gymnasium's own environments and ours stay as they are."""

    spec = gym.envs.registration.EnvSpec.from_json(spec_json)
    if spec.id.startswith("ALE/"):
        atari_env_id(spec.id)  # ale-py registers its ids itself (where installed), not we
    if is_minatar(spec.id):
        register_minatar()  # likewise MinAtar's
    if spec.id not in gym.registry:
        gym.register(
            spec.id,
            entry_point=spec.entry_point,
            reward_threshold=spec.reward_threshold,
            nondeterministic=spec.nondeterministic,
            max_episode_steps=spec.max_episode_steps,
            order_enforce=spec.order_enforce,
            disable_env_checker=spec.disable_env_checker,
            kwargs=spec.kwargs,
        )


def env_spec_of(env_id: str):
    """gymnasium's EnvSpec of ``env_id``, None where it has none; ``module:Env-v0`` imports
    the module first, as ``gymnasium.make`` does, so the spec of an environment registered
    by the user's module is found (a module that cannot be imported is a one-line
    UnicompError naming it)."""
    import importlib

    if env_id.startswith("ALE/"):
        atari_env_id(env_id)  # registers the ALE ids, where ale-py is installed
    if is_minatar(env_id):
        register_minatar()
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UnicompError(
                f"environment {env_id!r}: cannot import its module {module!r} ({err}); it "
                "must be importable from here (the working folder or PYTHONPATH)"
            ) from None
    return gym.registry.get(name)
