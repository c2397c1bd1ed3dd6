"""Decision Transformer evaluation speed: our vectorised, key/value-cached evaluator against
one episode at a time with the whole context recomputed at every step (what the official
code's evaluate_episode_rtg + get_action do), same model, same episode seeds, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dt_eval_speed.py --episodes 10 --max-steps 250

Three evaluators of the same model (paper size: 3 layers, width 128, 1 head, K = 20; random
init, or ``--train-steps N`` on random-policy data first):

* sequential: one environment; at each step the last K steps of (R, s, a, t) are left-padded
  with zeros to K (attention mask 0 on padding) and run through the whole model; the last
  state token's output is the action. Our reimplementation of the official loop, not its code.
* vectorised exact: ``unicomp.rl.evaluate.run_episodes`` with all episodes in one gymnasium
  vector env and ``DTAgent(window="exact")``: one batched model call per step; the first K
  steps feed only their new tokens through the cache, later steps recompute the last K steps
  (the same function as sequential, so returns agree up to float rounding).
* vectorised rolling: the same, ``window="rolling"``: the cache keeps the last K steps, 3 new
  tokens per step (approximate past K steps; see DecisionTransformer.start).

Both count only the real steps of each episode; the vectorised evaluators also step the
environments whose episode has ended until the whole group is done (see run_episodes).

By default Hopper is made with ``terminate_when_unhealthy=False`` (``--env-kwargs``): a
random-init DT falls in about 11 steps, so with termination there is little to time. Every
episode then runs to ``--max-steps``; both evaluators use the same environment.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _measure import write_record  # benchmarks/ helper

from unicomp.models.decision_transformer import DecisionTransformer, build_decision_transformer
from unicomp.rl.envs import make_env
from unicomp.rl.evaluate import DTAgent, run_episodes


def sequential_rollouts(
    model: DecisionTransformer,
    env_id: str,
    episodes: int,
    seed: int,
    target: float,
    scale: float,
    mean: np.ndarray,
    std: np.ndarray,
    max_steps: int,
    env_kwargs: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """One episode at a time, the whole context recomputed at every step."""
    K = model.config.max_length
    act_dim = model.config.act_dim
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    env = make_env(env_id, max_episode_steps=max_steps, **env_kwargs)
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            states = [torch.as_tensor((obs - mean) / std, dtype=torch.float32)]
            rtg = [torch.tensor([target / scale])]
            actions: list[torch.Tensor] = []
            done = False
            while not done:
                t = len(states)
                lo = max(0, t - K)
                pad = K - (t - lo)
                s = torch.stack(states[lo:])  # (n, obs)
                r = torch.stack(rtg[lo:])  # (n, 1)
                # this step's action is unknown: zeros in its slot (causal attention hides it)
                a = torch.stack([*actions[lo:], torch.zeros(act_dim)])  # (n, act)
                ts = torch.arange(lo, t).clamp(max=model.config.max_ep_len - 1)
                x = {
                    "states": torch.cat([torch.zeros(pad, s.shape[1]), s])[None],
                    "returns_to_go": torch.cat([torch.zeros(pad, 1), r])[None],
                    "actions": torch.cat([torch.zeros(pad, act_dim), a])[None],
                    "timesteps": torch.cat([torch.zeros(pad, dtype=torch.long), ts])[None],
                }
                mask = torch.cat([torch.zeros(pad), torch.ones(t - lo)])[None]
                with torch.no_grad():
                    action = model(x, mask)[0, -1]
                obs, reward, term, trunc, _ = env.step(action.numpy())
                returns[i] += reward
                lengths[i] += 1
                done = term or trunc
                actions.append(action)
                states.append(torch.as_tensor((obs - mean) / std, dtype=torch.float32))
                rtg.append(rtg[-1] - reward / scale)
    finally:
        env.close()
    return returns, lengths


def brief_training(env_id: str, steps: int, seed: int) -> tuple[DecisionTransformer, dict]:
    """A paper-size DT trained ``steps`` steps on 50 random-policy episodes."""
    import tempfile
    from pathlib import Path

    from unicomp.config import TrainConfig
    from unicomp.rl.collect import make_policy
    from unicomp.rl.dt_task import DTTask
    from unicomp.rl.trajectories import TrajectoryDataset
    from unicomp.train import train

    policy, _ = make_policy("random", env_id, seed=seed)
    data = run_episodes(env_id, policy, 50, seed=seed, n_envs=10, record=True)
    task = DTTask(TrajectoryDataset(data.episodes, env_id=env_id, source="random"))
    torch.manual_seed(seed)
    model = build_decision_transformer(task.spec.d_in, task.act_dim)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-4, eval_every=steps, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, task, cfg, Path(tmp))
    return model, task.normalization()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=250, help="episode length cap")
    p.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    p.add_argument("--target", type=float, default=3600.0, help="target return (hopper: 3600)")
    p.add_argument("--train-steps", type=int, default=0, help="0: random init")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--env-kwargs",
        default='{"terminate_when_unhealthy": false}',
        help="JSON: gymnasium.make keyword arguments, for both evaluators ('{}': the env's own)",
    )
    p.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env_kwargs = json.loads(args.env_kwargs)

    if args.train_steps:
        model, norm = brief_training(args.env, args.train_steps, args.seed)
        mean, std = np.array(norm["state_mean"]), np.array(norm["state_std"])
    else:
        env = make_env(args.env)
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        torch.manual_seed(args.seed)
        model = build_decision_transformer(obs_dim, act_dim)  # 3 layers, 128, K = 20
        mean, std = np.zeros(obs_dim), np.ones(obs_dim)
    model.eval()
    scale = 1000.0
    results = {}

    t0 = time.perf_counter()
    ret, length = sequential_rollouts(
        model,
        args.env,
        args.episodes,
        args.seed,
        args.target,
        scale,
        mean,
        std,
        args.max_steps,
        env_kwargs,
    )
    results["sequential, full recompute"] = (time.perf_counter() - t0, ret, length)
    for window in ("exact", "rolling"):
        agent = DTAgent(model, args.target, mean, std, scale, window=window)
        t0 = time.perf_counter()
        r = run_episodes(
            args.env,
            agent,
            args.episodes,
            seed=args.seed,
            n_envs=args.episodes,
            max_episode_steps=args.max_steps,
            env_kwargs=env_kwargs,
        )
        results[f"vectorised, KV cache, {window}"] = (
            time.perf_counter() - t0,
            r.returns,
            r.lengths,
        )

    base = results["sequential, full recompute"][0]
    print(
        f"{args.env}, {args.episodes} episodes "
        f"(seeds {args.seed}..{args.seed + args.episodes - 1}),"
        f" cap {args.max_steps} steps, DT 3x128 K=20, "
        f"{'trained ' + str(args.train_steps) + ' steps' if args.train_steps else 'random init'},"
        f" env kwargs {env_kwargs}, torch {torch.__version__}, {args.threads} thread(s)\n"
    )
    columns = ["episodes", "evaluator", "seconds", "steps/s", "speed-up", "return mean",
               "length min-max"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    rows, table = {}, []
    for name, (sec, ret, length) in results.items():
        steps = int(length.sum())
        rows[name] = {
            "seconds": sec,
            "steps": steps,
            "speedup": base / sec,
            "return_mean": float(ret.mean()),
            "returns": ret.tolist(),
            "lengths": length.tolist(),
        }
        cells = [args.episodes, name, f"{sec:.2f}", f"{steps / sec:.0f}", f"{base / sec:.1f}x",
                 f"{ret.mean():.1f}", f"{length.min()}-{length.max()}"]  # fmt: skip
        table.append(cells)
        print("| " + " | ".join(str(c) for c in cells) + " |")
    seq, exact = results["sequential, full recompute"], results["vectorised, KV cache, exact"]
    same = np.array_equal(seq[2], exact[2]) and np.allclose(seq[1], exact[1], rtol=1e-3)
    print(
        f"\nspeed ratio (sequential / vectorised exact): {base / exact[0]:.1f}x; "
        f"same lengths and returns (rtol 1e-3): {same}; "
        f"max return difference {np.abs(seq[1] - exact[1]).max():.3g}"
    )
    if args.out:
        about = (
            f"{args.env} ({args.env_kwargs}), {args.episodes} episodes of at most "
            f"{args.max_steps} steps, the paper's gym DT "
            f"({f'trained {args.train_steps} steps' if args.train_steps else 'random init'}), "
            f"target {args.target:g}; the exact evaluator's returns equal the sequential "
            f"one's (rtol 1e-3): {'yes' if same else 'no'}."
        )
        write_record(args.out, about, columns, table, args=vars(args), results=rows,
                     same_returns=bool(same))  # fmt: skip


if __name__ == "__main__":
    main()
