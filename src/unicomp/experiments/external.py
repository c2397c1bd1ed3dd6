"""Runs of other programs in our run-folder format: d3rlpy's CQL and IQL (``unicomp dt
external``) trained on our trajectory data sets and scored by our evaluator, so that
``unicomp dt compare`` puts them beside DT and BC runs.

d3rlpy 2.8 pins gymnasium 1.0 (we run 1.4), so it trains in its own virtual environment
(:data:`D3RLPY_INSTALL`). A run has three stages:

1. export (here, :func:`export_data`): the data set (Minari folder or id, D4RL .hdf5, read by
   unicomp) becomes flat arrays in OUT/data.npz: observations (the state of each step),
   actions, rewards, terminals (the environment ended the episode), timeouts (the episode was
   cut);
2. train (the d3rlpy venv, ``scripts/d3rlpy_train.py``, :func:`train_d3rlpy`): d3rlpy's CQL
   (continuous, or DiscreteCQL for discrete actions) or IQL with its default settings (for
   frames, DiscreteCQL with the settings of d3rlpy's reproduction on 1% of DQN Replay and,
   for MinAtar's small frames, MinAtar's network: see the script) for ``steps`` gradient
   steps; the greedy policy saved as TorchScript (OUT/policy.pt; d3rlpy
   puts its observation/action scalers inside), d3rlpy's loss log in OUT/d3rlpy_log.json;
3. evaluate (here, :func:`score_run`): the TorchScript policy acts through
   unicomp.rl.evaluate.run_episodes, the same vectorised, seeded evaluator as ``unicomp dt
   train``/``dt eval``, normalised against the same reference returns as a DT run on the data
   set, and OUT/metrics.json gets a DT run's score keys (unicomp.experiments.dt.primary_scores:
   return_mean, normalized_score_mean, ..., plus train_steps).

Departures: for vector observations d3rlpy's default hyperparameters, not the CQL paper's
per-task ones (the DT paper copied its CQL numbers from the CQL paper); no held-out episodes
(d3rlpy trains on all); the last weights are scored (no checkpoint selection).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from unicomp.errors import UnicompError
from unicomp.experiments.dt import EvalSettings, primary_scores
from unicomp.experiments.offline_rl import OfflineRLMethod, data_label
from unicomp.files import atomic_write_json
from unicomp.registry import OFFLINE_RL_METHODS
from unicomp.rl.datasets import read_datasets
from unicomp.rl.evaluate import run_episodes, score_reference
from unicomp.rl.trajectories import TrajectoryDataset, delay_rewards


class D3rlpyMethod(OfflineRLMethod):
    """An adapter: d3rlpy's algorithm ``name`` as an offline-RL method of ours, trained by
    d3rlpy (the stages above), labelled and named as our runs are. ``discrete``: d3rlpy has
    a variant for discrete actions."""

    def __init__(self, name: str, discrete: bool):
        self.name, self.discrete = name, discrete


CQL = D3rlpyMethod("cql", discrete=True)
IQL = D3rlpyMethod("iql", discrete=False)


def external_methods() -> list[str]:
    """The names of the offline-RL methods other programs train (registered ``external``)."""
    return [e.name for e in OFFLINE_RL_METHODS if e.kwargs.get("external")]


REPO = Path(__file__).resolve().parents[3]
TRAIN_SCRIPT = REPO / "scripts" / "d3rlpy_train.py"
D3RLPY_PYTHON = REPO / ".venv-d3rlpy" / "bin" / "python"
D3RLPY_INSTALL = "python3 -m venv .venv-d3rlpy && .venv-d3rlpy/bin/pip install torch==2.13.0 d3rlpy"


# How an external run's policy acts by default: 10 episodes resetting with seeds 10000, ...,
# 16 environments at once, the environment's own time limit (as a DT run's defaults)
EVAL_DEFAULTS = EvalSettings()


def default_out(algo: str, data: str, seed: int) -> Path:
    """runs/<algo>-<data folder>-s<seed>, as ``unicomp dt train`` names its runs."""
    return Path("runs") / f"{algo}-{data_label(data)}-s{seed}"


# --- stage 1: export ------------------------------------------------------------------------
def flat_arrays(dataset: TrajectoryDataset) -> dict[str, np.ndarray]:
    """The data set as D4RL-style flat arrays (what d3rlpy's MDPDataset reads; frames stay
    uint8, for d3rlpy's pixel scaler, other observations become float32); every
    episode ends with a terminal or a timeout, or d3rlpy would join it to the next, and never
    with both (d3rlpy refuses that): a step that terminated at the time limit counts as
    terminal, the stronger fact for value learning."""
    eps = dataset.episodes
    terminals = np.concatenate([e.terminations for e in eps]).astype(np.float32)
    timeouts = np.concatenate([e.truncations for e in eps]).astype(np.float32)
    ends = np.cumsum([len(e) for e in eps]) - 1
    timeouts[ends] = np.maximum(timeouts[ends], 1.0 - terminals[ends])
    timeouts *= 1.0 - terminals
    actions = np.concatenate([e.actions for e in eps])
    states = np.concatenate([e.states for e in eps])
    frames = states.ndim == 4 and states.dtype == np.uint8  # (C, H, W) pixels stay bytes
    return {
        "observations": states if frames else states.astype(np.float32),
        "actions": actions if dataset.discrete else actions.astype(np.float32),
        "rewards": np.concatenate([e.rewards for e in eps]).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def export_data(
    data: str, env: str | None, out: Path, *, delayed_reward: bool = False
) -> dict[str, Any]:
    """Write ``data``'s episodes to ``out/data.npz`` (:func:`flat_arrays`), with every
    episode's reward given at its last step if ``delayed_reward`` (paper sec. 5.5, as
    ``dt train --delayed-reward``); returns the environment to act in (``env``, else the data
    set's), whether actions are discrete, the data's summary and the reference returns of its
    normalised score (as a DT run's)."""
    ds = read_datasets(data, env)  # several, comma-separated, as dt train takes them
    if delayed_reward:
        ds = delay_rewards(ds)
    np.savez(out / "data.npz", **flat_arrays(ds))
    env = env or ds.env_id
    return {
        "env": env,
        "discrete": ds.discrete,
        "n_actions": ds.action_dim if ds.discrete else None,
        "data": ds.summary(),
        "delayed_reward": delayed_reward,
        "reference_scores": score_reference(env, ds.metadata),
    }


# --- stage 2: train (the d3rlpy venv) -------------------------------------------------------
def train_d3rlpy(
    algo: str, out: Path, *, steps: int, seed: int, discrete: bool, python: Path, device: str
) -> float:
    """Run ``scripts/d3rlpy_train.py`` under the d3rlpy venv's ``python`` on out/data.npz;
    returns its wall-clock seconds."""
    if not TRAIN_SCRIPT.is_file():
        raise UnicompError(f"no {TRAIN_SCRIPT}: `unicomp dt external` needs a source checkout")
    cmd = [str(python), str(TRAIN_SCRIPT), "--algo", algo, "--out", str(out)]
    cmd += ["--steps", str(steps), "--seed", str(seed), "--device", device]
    cmd += ["--discrete"] if discrete else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise UnicompError(
            f"d3rlpy training failed (exit {done.returncode}; its output is above): {' '.join(cmd)}"
        )
    return time.perf_counter() - t0


# --- stage 3: evaluate ----------------------------------------------------------------------
class TorchScriptAgent:
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


def score_run(
    out: Path,
    algo: str,
    data: str,
    exported: dict[str, Any],
    *,
    seed: int,
    steps: int,
    wall_seconds: float,
    evaluation: EvalSettings = EVAL_DEFAULTS,
) -> dict[str, Any]:
    """Act with out/policy.pt in the exported environment and write out/metrics.json: the
    training record (out/d3rlpy_log.json), the evaluation under ``eval`` and its scores at
    the top level, as a DT run's (``primary_target`` null: CQL/IQL read no return).
    ``evaluation``: its episodes, seed, environments and time limit (a Markov policy reads
    no target return and no context window)."""
    env = exported["env"]
    reference = exported["reference_scores"]
    refs = reference and (reference["ref_min_score"], reference["ref_max_score"])
    trained = json.loads((out / "d3rlpy_log.json").read_text())
    result = run_episodes(
        env,
        TorchScriptAgent(out / "policy.pt", exported["discrete"]),
        evaluation.episodes,
        seed=evaluation.seed,
        n_envs=evaluation.n_envs,
        max_episode_steps=evaluation.max_steps or None,
    )
    scored = {"target_return": None, "seed": evaluation.seed, **result.summary(env, refs)}
    metrics = {
        "task": "offline-rl",
        "model": f"d3rlpy-{algo}",
        "algo": algo,
        "env": env,
        "data_path": data,
        "seed": seed,
        "steps": steps,
        "train_steps": steps,
        "train_seconds": trained["train_seconds"],
        "wall_seconds": round(wall_seconds, 2),
        "data": exported["data"],
        "delayed_reward": exported["delayed_reward"],
        "reference_scores": reference,
        "d3rlpy": trained["d3rlpy"],
        "d3rlpy_settings": trained.get("settings"),
        "batch_size": trained.get("batch_size"),
        "lr": trained.get("learning_rate"),
        "eval": [scored],
        **primary_scores([scored]),
    }
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def run_external(
    algo: str,
    data: str,
    out: str | Path,
    *,
    env: str | None = None,
    steps: int = 100_000,
    seed: int = 0,
    evaluation: EvalSettings = EVAL_DEFAULTS,
    python: str | Path | None = None,
    device: str = "cpu:0",
    delayed_reward: bool = False,
) -> dict[str, Any]:
    """The three stages (module docstring) into the run folder ``out``; returns its
    metrics.json. ``evaluation``: how stage 3 acts (:func:`score_run`). ``delayed_reward``:
    d3rlpy trains on the data with each episode's rewards summed at its last step; acting
    is unchanged (a Markov policy reads no reward)."""
    if algo not in external_methods():
        choices = ", ".join(external_methods())
        raise UnicompError(f"unknown algorithm {algo!r}; choose from {choices}")
    method = OFFLINE_RL_METHODS.entry(algo).load()
    out = Path(out)
    if (out / "metrics.json").exists():
        raise UnicompError(f"{out} already holds a run (metrics.json); choose another --out")
    python = Path(python) if python else D3RLPY_PYTHON
    if not python.exists():
        raise UnicompError(f"no d3rlpy venv at {python}; create it with: {D3RLPY_INSTALL}")
    out.mkdir(parents=True, exist_ok=True)
    exported = export_data(data, env, out, delayed_reward=delayed_reward)
    if not exported["env"]:
        raise UnicompError(f"{data} names no environment (D4RL files never do); pass --env")
    if exported["discrete"] and not method.discrete:
        raise UnicompError(
            f"d3rlpy has no discrete {algo.upper()}; use --algo cql for discrete actions"
        )
    discrete = exported["discrete"]
    wall = train_d3rlpy(
        algo, out, steps=steps, seed=seed, discrete=discrete, python=python, device=device
    )
    return score_run(
        out,
        algo,
        data,
        exported,
        seed=seed,
        steps=steps,
        wall_seconds=wall,
        evaluation=evaluation,
    )
