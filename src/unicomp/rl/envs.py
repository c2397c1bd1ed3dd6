"""Small gymnasium environments for the Decision Transformer paper's credit-assignment and
path-finding experiments. Importing this module registers them:

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

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

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


def _register() -> None:
    for env_id, entry in (
        ("KeyToDoor-v0", "unicomp.rl.envs:KeyToDoor"),
        ("GraphShortestPath-v0", "unicomp.rl.envs:GraphShortestPath"),
    ):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry)


_register()
