"""Decision Transformer and behaviour-cloning runs: ``run_dt`` trains on a data set through the
one loop, then acts in the environment; ``load_dt_run`` rebuilds a finished run's policy;
``evaluate_run`` acts with it again (``unicomp dt eval``).

The data path runs one way: a data set (unicomp.rl.trajectories) -> ``DTTask`` windows
(unicomp.rl.dt_task) -> the policy (unicomp.models.decision_transformer / .policies) -> the
loop (unicomp.train) -> the run folder -> acting (unicomp.rl.evaluate, environments from
unicomp.rl.envs).

A run folder holds config.yaml, metrics.json (with ``model_config`` and ``normalization``)
and best.safetensors (the validation-selected weights). ``eval.json``, written by
``evaluate_run``, holds the same top-level score keys as metrics.json: ``return_mean``,
``return_std``, ``normalized_score_mean``, ``normalized_score_std`` (D4RL environments),
``success_rate`` (Key-to-Door), ``episodes`` and ``train_steps``, taken from the first target
return, and every target's result under ``eval``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unicomp.config import DTConfig, comma_numbers, from_dict, load_yaml
from unicomp.errors import UnicompError
from unicomp.experiments.common import read_best, train_and_record
from unicomp.experiments.offline_rl import data_label, offline_rl_method, run_label
from unicomp.files import atomic_write_json, read_record
from unicomp.freezing import count_parameters
from unicomp.provenance import provenance
from unicomp.rl.dt_task import DTTask
from unicomp.rl.envs import register_env_spec
from unicomp.rl.evaluate import default_targets, evaluate_dt, score_reference
from unicomp.train import is_main_process, load_trainable_state, pick_device


def dt_task_defaults(name: str) -> dict:
    return dict(DTTask.default_train)


def dt_default_out(cfg: DTConfig) -> Path:
    """runs/<method>-<data folder>-s<seed>, e.g. runs/dt-hopper-medium-s0, runs/pbc10-...,
    runs/dt-a+b-s0 for --data data/a,data/b (the method's part: its ``folder_name``)."""
    method = offline_rl_method(cfg.algo).folder_name(cfg)
    return Path("runs") / f"{method}-{data_label(cfg.data)}-s{cfg.train.seed}"


def build_dt_task(cfg: DTConfig) -> DTTask:
    """The run's data as the loop's task: its windows, normalisation and episode split (seeded
    by the run's seed), the %BC selection and delayed rewards applied."""
    try:
        return DTTask(
            cfg.data,
            context=cfg.context,
            rtg_scale=cfg.rtg_scale,
            max_ep_len=cfg.max_ep_len,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            split_seed=cfg.train.seed,
            env_id=cfg.env,
            use_returns=offline_rl_method(cfg.algo).reads_returns,
            top_percent=cfg.top_percent,
            delayed_reward=cfg.delayed_reward,
        )
    except ValueError as err:
        raise UnicompError(str(err)) from None


def build_dt_policy(cfg: DTConfig, task) -> nn.Module:
    """The network ``cfg`` trains: its method's (unicomp.experiments.offline_rl): the DT, or
    for BC/%BC the DT without return tokens or the MLP policy."""
    return offline_rl_method(cfg.algo).build_policy(cfg, task)


def _dt_backbone_summary(model: nn.Module, cfg: DTConfig) -> dict:
    """What metrics.json records of the DT's transformer, as FPT runs do."""
    if not cfg.backbone:
        return {"backbone": None, "freeze": cfg.freeze}
    backbone = model.transformer
    return {
        "backbone": cfg.backbone,
        "freeze": cfg.freeze,
        "backbone_source": backbone.source,
        "backbone_type": backbone.model_type,
        "backbone_is_decoder": backbone.is_decoder,
        "positions": model.positions,
        "trainable_by_group": model.trainable_by_group,
    }


# The score keys a DT run folder's metrics.json (and eval.json) carry at the top level, taken
# from the evaluation with the first target return (the paper's higher one by default).
SCORE_KEYS = (
    "return_mean",
    "return_std",
    "normalized_score_mean",
    "normalized_score_std",
    "success_rate",
    "episodes",
)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a trained policy is scored by acting in its environment, built once (from a run's
    config by :meth:`of`, or from a command's flags) and passed whole to :func:`act`,
    :func:`evaluate_run` and unicomp.experiments.external: ``episodes`` per target return
    (episode i resets with ``seed + i``), ``n_envs`` environments stepped together, a time
    limit ``max_steps`` (0: the environment's own), the context past K (``window``: exact or
    rolling), discrete actions drawn from the predicted distribution (``sample``) and the
    target returns (``targets``; empty: the defaults). The defaults are DTConfig's; ``dt
    eval`` leaves ``seed``, ``window`` and ``sample`` None: the run's own."""

    episodes: int = 10
    seed: int | None = 10_000
    n_envs: int = 16
    max_steps: int = 0
    window: str | None = "exact"
    sample: bool | None = False
    targets: tuple[float, ...] = ()

    @classmethod
    def of(cls, cfg: DTConfig) -> EvalSettings:
        """A run's settings: its config's ``eval_*`` fields."""
        return cls(
            episodes=cfg.eval_episodes,
            seed=cfg.eval_seed,
            n_envs=cfg.eval_envs,
            max_steps=cfg.eval_max_steps,
            window=cfg.eval_window,
            sample=cfg.eval_sample,
            targets=tuple(comma_numbers(cfg.eval_targets, float, "--eval-targets")),
        )

    def completed(self, cfg: DTConfig) -> EvalSettings:
        """These settings with the run's own ``seed``, ``window`` and ``sample`` where they
        are None (``cfg``: the run's config)."""
        return dataclasses.replace(
            self,
            seed=cfg.eval_seed if self.seed is None else self.seed,
            window=self.window or cfg.eval_window,
            sample=cfg.eval_sample if self.sample is None else self.sample,
        )


def primary_scores(evals: list[dict]) -> dict:
    """The first evaluation's scores, for the top level of metrics.json / eval.json."""
    if not evals:
        return {}
    first = evals[0]
    scores = {k: first[k] for k in SCORE_KEYS if k in first}
    # always present; null where the environment has no D4RL reference returns
    scores.setdefault("normalized_score_mean", None)
    scores.setdefault("normalized_score_std", None)
    return {"primary_target": first["target_return"], **scores}


def act(
    model: nn.Module,
    env_id: str,
    targets: list[float | None],
    norm: dict,
    reference: dict | None,
    evaluation: EvalSettings,
    progress: bool = True,
) -> list[dict]:
    """Act with a trained policy in ``env_id``, once per target return (None: BC, which reads
    none), as it was trained to (``norm``: the run's normalization), as ``evaluation`` says
    (its ``targets`` aside: ``targets`` are the ones chosen); scores against ``reference``
    (the data set's random/expert returns) where given, else our table's."""
    refs = reference and (reference["ref_min_score"], reference["ref_max_score"])
    return [
        evaluate_dt(
            model,
            env_id,
            target,
            norm["state_mean"],
            norm["state_std"],
            norm["rtg_scale"],
            episodes=evaluation.episodes,
            seed=evaluation.seed,
            n_envs=evaluation.n_envs,
            max_episode_steps=evaluation.max_steps or None,
            window=evaluation.window,
            delayed_reward=bool(norm.get("delayed_reward", False)),
            sample=evaluation.sample,
            ref_scores=refs,
            progress=progress,
        )
        for target in targets
    ]


def run_dt(cfg: DTConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train a Decision Transformer (or, ``cfg.algo`` bc/pbc, a behaviour-cloning baseline) on
    ``cfg.data`` through the one loop (checkpoint chosen on held-out episodes' action loss),
    then act in the environment with the chosen weights, conditioned on each target return
    (BC: once, it reads no return). ``resume``: continue the run in ``cfg.out``;
    ``overwrite``: replace it. Writes the usual run folder; ``metrics.json`` adds ``eval``
    (return and normalised score per target), the first target's scores at the top level
    (``return_mean``, ``normalized_score_mean``, ..., ``train_steps``), ``normalization``
    (what acting needs: state mean/std, return scale) and ``model_config`` (what
    ``unicomp dt eval`` rebuilds the network from)."""
    if not cfg.data:
        raise UnicompError(
            "--data is required: a Minari folder (unicomp dt collect), a Minari data set id "
            "or a D4RL .hdf5 file"
        )
    method = offline_rl_method(cfg.algo)
    method.check(cfg)
    evaluation = EvalSettings.of(cfg)
    task = build_dt_task(cfg)
    env_id = task.env_id
    if evaluation.episodes > 0 and not env_id:
        raise UnicompError(
            f"{cfg.data} names no environment (D4RL files never do); pass --env, e.g. "
            "--env Hopper-v5, to evaluate in one"
        )
    if evaluation.episodes > 0:
        check_env_fits_data(env_id, task.dataset, cfg.data)  # before training, not after
    returns = task.dataset.returns()
    targets = list(evaluation.targets) or list(
        default_targets(env_id, float(returns.max()), float(np.median(returns)))
    )
    eval_targets: list[float | None] = list(targets) if method.reads_returns else [None]
    out = Path(cfg.out) if cfg.out else dt_default_out(cfg)
    cfg.out = str(out)
    torch.manual_seed(cfg.train.seed)
    model = method.build_policy(cfg, task)
    trainable, total = count_parameters(model)
    norm = task.normalization()
    reference = score_reference(env_id, task.dataset.metadata)
    summary = {
        **_dt_backbone_summary(model, cfg),
        "env": env_id,
        # the data set's env spec, to rebuild an environment of the user's (mymod:MyEnv-v0)
        "env_spec": None if cfg.env else task.dataset.metadata.get("env_spec"),
        "reference_scores": reference,  # of normalized_score_*: the data set's, else our table
        "data_path": cfg.data,
        "algo": cfg.algo,
        "policy": method.policy_name(cfg),
        "top_percent": cfg.top_percent,
        "delayed_reward": cfg.delayed_reward,
        "context": cfg.context,
        "data": task.dataset.summary(),
        "source_data": task.source_summary,
        # several --data trained on together: each one (name, Minari id, size, returns)
        "data_sets": task.dataset.metadata.get("data_sets"),
        # the warm-up the run used: --warmup-steps, else the DT's fraction of --steps
        "warmup_steps": cfg.train.warmup_steps,
        "warmup_fraction": round(cfg.train.warmup_steps / cfg.train.steps, 4),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "normalization": norm,
        "model_config": method.policy_spec(model),
    }
    header = {"task": "dt", "model": summary["policy"], "data": cfg.data}
    metrics = train_and_record(cfg, task, model, header, summary, out, resume, overwrite)
    metrics["train_steps"] = metrics["steps"]
    if evaluation.episodes > 0 and is_main_process():
        metrics["eval"] = act(
            model, env_id, eval_targets, norm, reference, evaluation, progress=cfg.train.progress
        )
        metrics.update(primary_scores(metrics["eval"]))
    if is_main_process():
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def check_env_fits_data(env_id: str, dataset, data: str) -> None:
    """The environment a run will act in exists and takes the data's observations and
    actions; else one line naming what differs (checked before training, so that a wrong
    ``--env`` costs nothing)."""
    import gymnasium as gym

    from unicomp.rl.envs import make_env

    env = make_env(env_id)
    try:
        obs, act = env.observation_space, env.action_space
    finally:
        env.close()
    where = f"--env {env_id} does not fit the data ({data})"
    if tuple(obs.shape) != tuple(dataset.obs_shape):
        raise UnicompError(
            f"{where}: observations of shape {tuple(obs.shape)} in the environment, "
            f"{tuple(dataset.obs_shape)} in the data"
        )
    if dataset.discrete != isinstance(act, gym.spaces.Discrete):
        kinds = ("discrete", "continuous")
        raise UnicompError(
            f"{where}: {kinds[not isinstance(act, gym.spaces.Discrete)]} actions in the "
            f"environment, {kinds[not dataset.discrete]} in the data"
        )
    n = int(act.n) if dataset.discrete else int(np.prod(act.shape))
    if (dataset.discrete and dataset.action_dim > n) or (
        not dataset.discrete and dataset.action_dim != n
    ):
        raise UnicompError(
            f"{where}: {n} action{'s' if dataset.discrete else ' values'} in the environment, "
            f"{dataset.action_dim} in the data"
        )


def load_dt_run(run: str | Path) -> tuple[nn.Module, DTConfig, dict]:
    """(model with its best weights, in eval mode; config; metrics) of a finished DT/BC run
    folder."""
    run = Path(run)
    cfg = from_dict(DTConfig, load_yaml(run / "config.yaml"), f"{run / 'config.yaml'}")
    metrics = read_record(run / "metrics.json")
    if "normalization" not in metrics:
        raise UnicompError(f"{run / 'metrics.json'}: no 'normalization'; not a dt train run")
    if "model_config" in metrics:
        model = offline_rl_method(cfg.algo).rebuild_policy(metrics["model_config"])
    else:  # runs written before model_config was recorded: rebuild from the data set
        task = build_dt_task(cfg)
        torch.manual_seed(0)
        model = build_dt_policy(cfg, task)
    best = run / "best.safetensors"
    if not best.exists():
        raise UnicompError(f"{best} does not exist: the run saved no weights")
    load_trainable_state(model, read_best(run))  # a damaged file: one line naming it
    return model.eval(), cfg, metrics


def _eval_problems(evaluation: EvalSettings) -> str:
    """``evaluate_run``'s settings outside their range, named as dt eval's flags ('' if none):
    checked before the run is loaded (0 episodes gave a numpy traceback after loading, a
    negative time limit an endless episode)."""
    from unicomp.config import MAX_EVAL_EPISODES, MAX_SEED, MAX_STEPS

    limits = [
        ("--eval-episodes", evaluation.episodes, 1, MAX_EVAL_EPISODES),
        ("--eval-seed", evaluation.seed, 0, MAX_SEED),
        ("--eval-envs", evaluation.n_envs, 1, 1 << 12),
        ("--eval-max-steps", evaluation.max_steps, 0, MAX_STEPS),
    ]
    return "; ".join(
        f"{flag} must be an integer in {low}..{high}, got {value!r}"
        for flag, value, low, high in limits
        if value is not None
        and not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high)
    )


# dt eval's defaults: 10 episodes per target, 16 environments, the environment's time limit,
# and the run's own seed, context window and sampling
DT_EVAL_DEFAULTS = EvalSettings(seed=None, window=None, sample=None)


def evaluate_run(
    run: str | Path,
    evaluation: EvalSettings = DT_EVAL_DEFAULTS,
    out: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Act with a run's best weights in its environment as ``evaluation`` says (its None
    fields: the run's own; :data:`DT_EVAL_DEFAULTS`): its ``episodes`` per target return,
    many at once in vector environments. Targets default to the ones the run was evaluated
    with (else the paper's for the environment); BC runs ignore them. Writes ``out``
    (default ``run/eval.json``) and returns its content. ``device``: where the model acts
    (auto: a GPU where there is one); the environments step on the CPU."""

    problems = _eval_problems(evaluation)
    if problems:
        raise UnicompError(f"dt eval: {problems}")
    model, cfg, metrics = load_dt_run(run)
    evaluation = evaluation.completed(cfg)
    model.to(pick_device(device))
    env_id = metrics.get("env") or cfg.env
    if not env_id:
        raise UnicompError(f"{run}: the run names no environment to act in")
    if metrics.get("env_spec"):  # the data set's environment, registered as it recorded it
        register_env_spec(metrics["env_spec"])
    reference = metrics.get("reference_scores")  # runs before it was recorded: our table
    norm = metrics["normalization"]
    if not offline_rl_method(cfg.algo).reads_returns:
        chosen: list[float | None] = [None]
    elif evaluation.targets:
        chosen = list(evaluation.targets)
    elif metrics.get("eval"):
        chosen = [e["target_return"] for e in metrics["eval"]]
    else:
        data = metrics["data"]  # runs before return_median was recorded: the mean
        typical = data.get("return_median", data["return_mean"])
        chosen = list(default_targets(env_id, float(data["return_max"]), float(typical)))
    evals = act(model, env_id, chosen, norm, reference, evaluation)
    result = {
        "run": str(run),
        "env": env_id,
        "algo": cfg.algo,
        "label": run_label(metrics, cfg.algo),
        "data_path": cfg.data,
        "seed": cfg.train.seed,
        "eval_seed": evaluation.seed,
        "train_steps": metrics.get("steps"),
        "best_step": metrics.get("best_step"),
        **primary_scores(evals),
        "eval": evals,
        "device": str(next(model.parameters()).device),
        **provenance(),
    }
    atomic_write_json(Path(out) if out else Path(run) / "eval.json", result)
    return result
