"""CQL and IQL baselines on our trajectory data sets, trained by d3rlpy, scored by our
evaluator; writes a run folder that ``unicomp dt compare`` reads beside DT/BC runs.

d3rlpy 2.8 pins gymnasium 1.0 (we run 1.4), so it lives in its own virtual environment:

    python3 -m venv .venv-d3rlpy && .venv-d3rlpy/bin/pip install torch==2.13.0 d3rlpy

Then, with unicomp's environment (one command does all three stages):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/d3rlpy_baseline.py --algo cql \\
        --data data/hopper-medium --steps 100000 --out runs/cql-hopper-medium-s0

1. export (our venv): the data set (Minari folder or D4RL .hdf5, read by unicomp) becomes
   flat arrays in OUT/data.npz: observations (the state of each step), actions, rewards,
   terminals (the environment ended the episode), timeouts (the episode was cut);
2. train (the d3rlpy venv, this script run again with ``--stage train``): d3rlpy's CQL
   (continuous, or DiscreteCQL for discrete actions) or IQL with its default settings for
   ``--steps`` gradient steps; the greedy policy is saved as TorchScript (OUT/policy.pt; d3rlpy
   puts its observation/action scalers inside), d3rlpy's loss log in OUT/d3rlpy_log.json;
3. evaluate (our venv): the TorchScript policy acts through unicomp.rl.evaluate.run_episodes,
   the same vectorised, seeded evaluator as ``unicomp dt train``/``dt eval``, and
   OUT/metrics.json gets our keys (return_mean, normalized_score_mean, ..., train_steps).

Departures: d3rlpy's default hyperparameters, not the CQL paper's per-task ones (the DT paper
copied its CQL numbers from the CQL paper); no held-out episodes (d3rlpy trains on all); the
last weights are scored (no checkpoint selection).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# --- stage 1: export (unicomp's venv) ----------------------------------------------------------
def export(data: str, env: str | None, out: Path) -> dict:
    from unicomp.rl.trajectories import read_dataset

    ds = read_dataset(data, env)
    eps = ds.episodes
    terminals = np.concatenate([e.terminations for e in eps]).astype(np.float32)
    timeouts = np.concatenate([e.truncations for e in eps]).astype(np.float32)
    ends = np.cumsum([len(e) for e in eps]) - 1
    # every episode ends with a terminal or a timeout, or d3rlpy would join it to the next
    timeouts[ends] = np.maximum(timeouts[ends], 1.0 - terminals[ends])
    arrays = {
        "observations": np.concatenate([e.states for e in eps]).astype(np.float32),
        "actions": np.concatenate([e.actions for e in eps]),
        "rewards": np.concatenate([e.rewards for e in eps]).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    if not ds.discrete:
        arrays["actions"] = arrays["actions"].astype(np.float32)
    np.savez(out / "data.npz", **arrays)
    return {
        "env": ds.env_id,
        "discrete": ds.discrete,
        "n_actions": ds.action_dim if ds.discrete else None,
        "data": ds.summary(),
    }


# --- stage 2: train (the d3rlpy venv) ----------------------------------------------------------
def train_d3rlpy(
    algo: str, out: Path, steps: int, seed: int, discrete: bool, device: str = "cpu:0"
) -> None:
    import d3rlpy
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    d3rlpy.seed(seed)
    arrays = np.load(out / "data.npz")
    kwargs = {}
    if discrete:
        kwargs = {"action_space": d3rlpy.ActionSpace.DISCRETE}
    dataset = d3rlpy.dataset.MDPDataset(
        arrays["observations"],
        arrays["actions"],
        arrays["rewards"],
        arrays["terminals"],
        timeouts=arrays["timeouts"],
        **kwargs,
    )
    if algo == "cql":
        config = d3rlpy.algos.DiscreteCQLConfig() if discrete else d3rlpy.algos.CQLConfig()
    elif algo == "iql":
        if discrete:
            raise SystemExit("d3rlpy has no discrete IQL; use --algo cql for discrete actions")
        config = d3rlpy.algos.IQLConfig()
    else:
        raise SystemExit(f"unknown --algo {algo!r}")
    model = config.create(device=device)
    t0 = time.perf_counter()
    log = model.fit(
        dataset,
        n_steps=steps,
        n_steps_per_epoch=min(steps, 1000),
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
        save_interval=10**9,
    )
    seconds = time.perf_counter() - t0
    model.save_policy(str(out / "policy.pt"))
    record = {
        "train_seconds": round(seconds, 2),
        "d3rlpy": d3rlpy.__version__,
        "config": json.loads(config.serialize()) if hasattr(config, "serialize") else str(config),
        "epochs": [{"epoch": e, **{k: float(v) for k, v in m.items()}} for e, m in log],
    }
    (out / "d3rlpy_log.json").write_text(json.dumps(record, indent=2, default=str))


# --- stage 3: evaluate (unicomp's venv) ----------------------------------------------------------
class TorchScriptPolicy:
    """A TorchScript policy (observations -> actions) as an agent for run_episodes."""

    def __init__(self, path: Path, discrete: bool):
        import torch

        self.policy = torch.jit.load(str(path), map_location="cpu")
        self.discrete = discrete

    def reset(self, n: int) -> None:
        pass

    def observe(self, rewards: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            action = self.policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        return action.astype(np.int64) if self.discrete else action


def evaluate(out: Path, env: str, discrete: bool, args) -> dict:
    from unicomp.rl.evaluate import run_episodes

    agent = TorchScriptPolicy(out / "policy.pt", discrete)
    result = run_episodes(
        env,
        agent,
        args.eval_episodes,
        seed=args.eval_seed,
        n_envs=args.eval_envs,
        max_episode_steps=args.eval_max_steps or None,
    )
    summary = result.summary(env)
    return {"target_return": None, "seed": args.eval_seed, **summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=("cql", "iql"), required=True)
    p.add_argument("--data", required=True, help="Minari folder or D4RL .hdf5")
    p.add_argument("--env", help="gymnasium id to act in [the data set's]")
    p.add_argument("--out", required=True, help="run folder (must not hold a metrics.json)")
    p.add_argument("--steps", type=int, default=100_000, help="gradient steps [100000]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--eval-seed", type=int, default=10_000)
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--eval-max-steps", type=int, default=0, help="0: the env's own limit")
    p.add_argument(
        "--d3rlpy-python",
        default=str(ROOT / ".venv-d3rlpy" / "bin" / "python"),
        help="python of the venv with d3rlpy [.venv-d3rlpy/bin/python]",
    )
    p.add_argument("--device", default="cpu:0", help="d3rlpy's training device [cpu:0]")
    p.add_argument("--stage", choices=("all", "train"), default="all", help=argparse.SUPPRESS)
    p.add_argument("--discrete", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)

    if args.stage == "train":  # inside the d3rlpy venv
        train_d3rlpy(args.algo, out, args.steps, args.seed, args.discrete, args.device)
        return

    if (out / "metrics.json").exists():
        raise SystemExit(f"{out} already holds a run (metrics.json); choose another --out")
    if not Path(args.d3rlpy_python).exists():
        raise SystemExit(
            f"no d3rlpy venv at {args.d3rlpy_python}; create it with: python3 -m venv "
            f".venv-d3rlpy && .venv-d3rlpy/bin/pip install torch==2.13.0 d3rlpy"
        )
    out.mkdir(parents=True, exist_ok=True)
    exported = export(args.data, args.env, out)
    env = args.env or exported["env"]
    if not env:
        raise SystemExit(f"{args.data} names no environment; pass --env")
    from unicomp.experiments.dt import primary_scores
    from unicomp.files import atomic_write_json

    cmd = [args.d3rlpy_python, __file__, "--stage", "train", "--algo", args.algo]
    cmd += ["--data", args.data, "--out", str(out), "--steps", str(args.steps)]
    cmd += ["--seed", str(args.seed), "--device", args.device]
    cmd += ["--discrete"] if exported["discrete"] else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    trained = json.loads((out / "d3rlpy_log.json").read_text())
    ev = evaluate(out, env, exported["discrete"], args)
    metrics = {
        "task": "offline-rl",
        "model": f"d3rlpy-{args.algo}",
        "algo": args.algo,
        "env": env,
        "data_path": args.data,
        "seed": args.seed,
        "steps": args.steps,
        "train_steps": args.steps,
        "train_seconds": trained["train_seconds"],
        "wall_seconds": round(wall, 2),
        "data": exported["data"],
        "d3rlpy": trained["d3rlpy"],
        "eval": [ev],
        **primary_scores([ev]),  # CQL/IQL read no return: primary_target is null
    }
    atomic_write_json(out / "metrics.json", metrics)
    keys = ("algo", "env", "train_steps", "return_mean", "normalized_score_mean")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    print(f"run folder: {out}")


if __name__ == "__main__":
    sys.exit(main())
