"""The Decision Transformer paper's figure 1 in small: random walks on a fixed random graph
(reward -1 per step, 0 for the step that reaches the goal), a DT trained on them through the
one training loop, then conditioned on the best return, against the walks themselves and the
true shortest paths (breadth-first search).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/graph_shortest_path.py

Prints, over the same evaluation start nodes: how often the goal is reached, the mean path
length, and the mean excess over the shortest path, for the random walk, BC (the same network
without returns) and the DT. The DT is conditioned on return 0 at every start (the best any
episode can have: the goal in one step); the paper conditions on "the highest possible
return" without saying more, so this is our reading.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unicomp.config import TrainConfig
from unicomp.models.decision_transformer import build_decision_transformer
from unicomp.rl.collect import make_policy
from unicomp.rl.dt_task import DTTask
from unicomp.rl.envs import make_env
from unicomp.rl.evaluate import DTAgent, run_episodes
from unicomp.rl.trajectories import TrajectoryDataset
from unicomp.train import train

ENV = "GraphShortestPath-v0"


def starts_of(seeds: list[int], env_kwargs: dict) -> np.ndarray:
    env = make_env(ENV, **env_kwargs)
    try:
        return np.array([env.reset(seed=s)[1]["start"] for s in seeds])
    finally:
        env.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--edge-prob", type=float, default=0.1)
    p.add_argument("--graph-seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=40, help="walk length cap")
    p.add_argument("--walks", type=int, default=2000, help="random-walk episodes to train on")
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    p.add_argument("--episodes", type=int, default=500, help="evaluation episodes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    kw = {
        "n_nodes": args.nodes,
        "edge_prob": args.edge_prob,
        "graph_seed": args.graph_seed,
        "max_steps": args.max_steps,
    }
    env = make_env(ENV, **kw)
    dist = env.unwrapped.shortest_path_lengths()
    n_actions = env.action_space.n
    env.close()

    t0 = time.perf_counter()
    walker, _ = make_policy("random", ENV, seed=args.seed)  # uniform actions = a random walk
    data = run_episodes(
        ENV, walker, args.walks, seed=args.seed, n_envs=100, record=True, env_kwargs=kw
    )
    ds = TrajectoryDataset(
        data.episodes, env_id=ENV, source="random walks", metadata={"n_actions": n_actions}
    )
    eval_seed = 10_000
    seeds = list(range(eval_seed, eval_seed + args.episodes))
    starts = starts_of(seeds, kw)
    rows = {}
    walk = run_episodes(
        ENV,
        make_policy("random", ENV, seed=1)[0],
        args.episodes,
        seed=eval_seed,
        n_envs=100,
        env_kwargs=kw,
    )
    rows["random walk"] = walk
    K = args.max_steps
    for algo in ("bc", "dt"):
        task = DTTask(
            ds, context=K, rtg_scale=float(args.max_steps), max_ep_len=K, use_returns=algo == "dt"
        )
        torch.manual_seed(args.seed)
        model = build_decision_transformer(
            args.nodes,
            n_actions,
            discrete=True,
            max_length=K,
            max_ep_len=K,
            hidden_size=64,
            n_layer=2,
            dropout=0.0,
            use_returns=algo == "dt",
        )
        cfg = TrainConfig(
            steps=args.steps,
            batch_size=64,
            lr=1e-3,
            weight_decay=1e-4,
            warmup_steps=100,
            eval_every=args.steps,
            progress=False,
        )
        with tempfile.TemporaryDirectory() as tmp:
            train(model, task, cfg, Path(tmp))
        norm = task.normalization()
        agent = DTAgent(model, 0.0, norm["state_mean"], norm["state_std"], norm["rtg_scale"])
        rows[algo.upper() + (" (target return 0)" if algo == "dt" else "")] = run_episodes(
            ENV, agent, args.episodes, seed=eval_seed, n_envs=100, env_kwargs=kw
        )
    best = dist[starts]
    print(
        f"graph: {args.nodes} nodes, edge prob {args.edge_prob}, seed {args.graph_seed}; "
        f"{args.walks} random walks (cap {args.max_steps}); {args.steps} training steps; "
        f"{args.episodes} evaluation starts; shortest path mean {best.mean():.2f}; "
        f"{time.perf_counter() - t0:.0f} s\n"
    )
    print("| policy | goal reached | mean path length | mean excess over shortest (reached) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        reached = r.returns > -args.max_steps  # the cap gives -max_steps
        excess = (r.lengths - best)[reached]
        print(
            f"| {name} | {reached.mean():.3f} | {r.lengths.mean():.2f} | "
            f"{excess.mean() if reached.any() else float('nan'):.2f} |"
        )
    print(f"| shortest path (BFS) | 1.000 | {best.mean():.2f} | 0.00 |")


if __name__ == "__main__":
    main()
