"""The Decision Transformer paper's figure 1 in small: random walks on a fixed random graph
(GraphShortestPath-v0: reward -1 per step, 0 for the step that reaches the goal), BC and a DT
trained on them, the DT conditioned on the best return, against the walks themselves and the
true shortest paths (breadth-first search).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/graph_shortest_path.py [--out runs/graph] [--seed 0]

Collects 2,000 random walks (OUT/walks-sS, as ``unicomp dt collect --policy random`` does),
trains BC and the DT on them through ``unicomp dt train``'s run_dt with
configs/dt-graph-shortest-path.yaml (run folders OUT/bc-sS and OUT/dt-sS; each one reruns with
``unicomp dt train --config OUT/dt-sS/config.yaml``), skipping what is already there. Then it
acts again with each run's best weights from the runs' evaluation starts and prints, for the
random walk, BC and the DT: how often the goal is reached, the mean path length, and the mean
excess over the shortest path. The DT is conditioned on return 0 at every start (the best any
episode can have: the goal in one step); the paper conditions on "the highest possible
return" without saying more, so this is our reading.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from unicomp.config import DTConfig, check_config, from_dict, load_yaml
from unicomp.experiments.dt import load_dt_run, run_dt
from unicomp.rl.collect import Component, collect, make_policy
from unicomp.rl.envs import make_env
from unicomp.rl.evaluate import DTAgent, run_episodes
from unicomp.runs import markdown_table

ENV = "GraphShortestPath-v0"
WALKS = 2000  # random-walk episodes to train on
PRESET = Path(__file__).resolve().parents[1] / "configs" / "dt-graph-shortest-path.yaml"


def train_run(algo: str, walks: Path, run: Path, seed: int) -> None:
    """BC or the DT on the walks with the preset, into ``run``: kept where it has finished,
    resumed where it was stopped."""
    if (run / "metrics.json").exists():
        return
    data = {**load_yaml(PRESET), "data": str(walks), "algo": algo, "out": str(run)}
    cfg = check_config(from_dict(DTConfig, data, str(PRESET)))
    cfg.train.seed, cfg.train.progress = seed, False
    run_dt(cfg, resume=(run / "checkpoint.pt").exists())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/graph", help="folder of the walks and runs [runs/graph]")
    p.add_argument("--seed", type=int, default=0, help="seed of the walks and of training [0]")
    args = p.parse_args()
    torch.set_num_threads(1)
    out, s = Path(args.out), args.seed
    t0 = time.perf_counter()
    walks = out / f"walks-s{s}"
    if not (walks / "collection.json").exists():
        collect(ENV, (Component("random"),), WALKS, walks, seed=s, n_envs=100, progress=False)
    runs = {"BC": out / f"bc-s{s}", "DT (target return 0)": out / f"dt-s{s}"}
    for algo, run in zip(("bc", "dt"), runs.values(), strict=True):
        train_run(algo, walks, run, s)

    env = make_env(ENV)
    dist, cap = env.unwrapped.shortest_path_lengths(), env.unwrapped.max_steps
    _, cfg, _ = load_dt_run(runs["BC"])
    episodes, eval_seed = cfg.eval_episodes, cfg.eval_seed
    try:
        starts = np.array([env.reset(seed=eval_seed + i)[1]["start"] for i in range(episodes)])
    finally:
        env.close()
    walker, _ = make_policy("random", ENV, seed=1)
    rows = {"random walk": run_episodes(ENV, walker, episodes, seed=eval_seed, n_envs=100)}
    for name, run in runs.items():
        model, cfg, metrics = load_dt_run(run)
        norm = metrics["normalization"]
        agent = DTAgent(model, 0.0, norm["state_mean"], norm["state_std"], norm["rtg_scale"])
        rows[name] = run_episodes(ENV, agent, episodes, seed=eval_seed, n_envs=cfg.eval_envs)
    best = dist[starts]
    print(
        f"{ENV}: {len(dist)} nodes, goal {env.unwrapped.goal}; {WALKS} random walks (cap {cap}) "
        f"in {walks}; {cfg.train.steps} training steps ({PRESET.name}); {episodes} evaluation "
        f"starts; shortest path mean {best.mean():.2f}; {time.perf_counter() - t0:.0f} s\n"
    )
    table = []
    for name, r in rows.items():
        reached = r.returns > -cap  # the cap gives -cap
        excess = (r.lengths - best)[reached]
        mean_excess = excess.mean() if reached.any() else float("nan")
        table.append(
            [name, f"{reached.mean():.3f}", f"{r.lengths.mean():.2f}", f"{mean_excess:.2f}"]
        )
    table.append(["shortest path (BFS)", "1.000", f"{best.mean():.2f}", "0.00"])
    head = ["policy", "goal reached", "mean path length", "mean excess over shortest (reached)"]
    print(markdown_table(head, table))


if __name__ == "__main__":
    main()
