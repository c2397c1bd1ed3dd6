"""Measure the returns of trained SB3 agents (and a random policy) in gymnasium environments,
with and without Gaussian action noise; print a markdown table (docs/rl-agents.md).

    python scripts/measure_agents.py --agents DIR --env Hopper-v5 --episodes 10 \
        --policies random,tqc,sac,ppo,a2c --noise 0,0.1,0.3,0.5
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from unicomp.rl.collect import make_policy
from unicomp.rl.evaluate import run_episodes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", required=True, help="rl-trained-agents folder (<algo>/<Env>_1/)")
    p.add_argument("--env", required=True)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--policies", default="random,tqc,sac,ppo,a2c")
    p.add_argument("--noise", default="0", help="comma-separated Gaussian noise levels")
    p.add_argument("--seed", type=int, default=100, help="episode i resets with seed + i")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # SB3's notes on old zips; MuJoCo's deprecations
    print("| env | policy | noise | episodes | return mean ± std | min | max | length | norm. |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.policies.split(","):
        for sigma in [float(s) for s in args.noise.split(",")]:
            if name == "random" and sigma > 0:
                continue
            policy, _ = make_policy(name, args.env, sigma, seed=1, agents_dir=Path(args.agents))
            result = run_episodes(args.env, policy, args.episodes, seed=args.seed, n_envs=10)
            s = result.summary(args.env)
            norm = s.get("normalized_score_mean")
            print(
                f"| {args.env} | {name} | {sigma:g} | {s['episodes']} | "
                f"{s['return_mean']:.0f} ± {s['return_std']:.0f} | {s['return_min']:.0f} | "
                f"{s['return_max']:.0f} | {s['length_mean']:.0f} | "
                f"{'' if norm is None else f'{norm:.1f}'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
