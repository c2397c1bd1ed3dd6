"""Decision Transformer: unicomp against the official code (github.com/kzl/decision-transformer,
gym/), training steps/s and evaluation environment steps/s, both in one process, rounds
interleaved (the machine is shared and noisy), printed as a table and one JSON line.

    git clone https://github.com/kzl/decision-transformer ../official-dt
    .venv/bin/unicomp dt collect --env Hopper-v5 --suite medium --episodes 200 \\
        --agents $UNICOMP_DATA/sb3-agents --out data/hopper-medium
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dt_vs_official.py \\
        --official ../official-dt --data data/hopper-medium \\
        --out results/benchmarks/dt-vs-official.json

    # with d3rlpy as well (it pins gymnasium 1.0, so it gets its own venv):
    python3 -m venv ../d3rlpy-venv
    ../d3rlpy-venv/bin/pip install torch==2.13.0 d3rlpy mujoco==3.17.0 imageio
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dt_vs_official.py \\
        --official ../official-dt --data data/hopper-medium \\
        --d3rlpy-python ../d3rlpy-venv/bin/python

The official code is imported at run time from ``--official`` (never copied here), with the
patches it needs to run on today's libraries (``_official_compat``, ``load_official``):
``gym`` (it wants mujoco-py's Hopper-v3) and ``wandb`` are stubs, the gym environment is
gymnasium's Hopper-v5 behind the old ``reset() -> obs``, ``step() -> (obs, reward, done,
info)`` interface, and its GPT-2 copy (written for transformers 4.5) finds the names
transformers has since moved or dropped: ``Conv1D``, ``transformers.file_utils``' docstring
decorators, ``get_head_mask``, 4.5's ``init_weights`` (today's also ties weights) and
``config.n_ctx`` (1024, GPT2Config's old default).

What is timed:

1. Training, the paper's gym settings (K = 20, 3 layers, width 128, 1 head, dropout 0.1,
   batch 64, AdamW lr 1e-4 wd 1e-4, 10k warm-up steps, gradient clip 0.25), fp32, on the
   same data (``--data``: a unicomp trajectory data set, also written as the official
   code's pickle of D4RL paths):
   * official: ``experiment()`` of gym/experiment.py itself, run with ``max_iters=0`` so
     that it builds its data arrays, ``get_batch``, model, AdamW, warm-up scheduler and
     ``SequenceTrainer`` and returns; then ``trainer.train_iteration(num_steps=N)`` (its
     evaluation functions removed): the official ``get_batch`` + ``train_step`` +
     ``scheduler.step`` loop, as experiment.py runs it.
   * unicomp: the body of ``unicomp.train.train``'s loop with its own pieces: ``DTTask``'s
     ``train_batch``, the model, ``DTTask.loss``, ``clip_grad_norm_``, ``make_optimizer``'s
     AdamW and the warm-up ``LambdaLR``; the loop's evaluation and checkpoints are left out,
     as the official side's are.
2. Evaluation: the same weights on both sides (the unicomp model after the training rounds,
   copied into the official model; the script checks both give the same actions), Hopper-v5
   with ``terminate_when_unhealthy=False`` and a ``--max-steps`` cap so every episode has
   the same length on every side, episode i reset with seed ``--seed`` + i, target return
   3600 (experiment.py's first Hopper target), scale 1000:
   * official: ``evaluate_episode_rtg`` itself, one episode after another, as
     experiment.py's ``eval_episodes`` calls it (under ``torch.no_grad()``);
   * unicomp: ``unicomp.rl.evaluate.run_episodes`` with ``DTAgent(window="exact")`` and
     ``DTAgent(window="rolling")``, all episodes in one vector environment (``--n-envs``).
   Environment steps/s counts the real steps of the episodes.
3. Optionally (``--d3rlpy-python``: the python of a virtual environment with d3rlpy, which
   pins an older gymnasium), d3rlpy's DecisionTransformer as a second reference, in a
   subprocess per round (its own timings; start-up not counted): ``fit`` for N steps on the
   same data, and its ``as_stateful_wrapper`` acting one environment at a time (the first
   ``--episodes`` count only: it is slow).

Both sides run in this process with one torch thread (``--threads``; set OMP_NUM_THREADS=1
too), so the numbers are per core. Each round runs every measurement once, in an order
reversed every other round; the table shows medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from _measure import write_record

OFFICIAL_FILES = (
    "gym/experiment.py",
    "gym/decision_transformer/models/decision_transformer.py",
    "gym/decision_transformer/models/trajectory_gpt2.py",
    "gym/decision_transformer/training/seq_trainer.py",
    "gym/decision_transformer/evaluation/evaluate_episodes.py",
)
TARGETS = {"train": 2.5, "exact": 5.0, "rolling": 10.0}  # issue 11's speed-ups, 10 episodes


# --- the official code, imported from its checkout ------------------------------------------
class OldGymEnv:
    """A gymnasium environment behind the gym < 0.26 interface the official code calls:
    ``reset() -> obs`` and ``step(a) -> (obs, reward, done, info)`` (done: terminated or
    truncated). The i-th ``reset`` uses ``seeds[i]``, so the official loop plays the same
    episodes as ours; past the listed seeds, resets are unseeded."""

    def __init__(self, env, seeds=()):
        self.env, self.seeds = env, list(seeds)
        self.observation_space, self.action_space = env.observation_space, env.action_space

    def reset(self):
        obs, _ = self.env.reset(seed=self.seeds.pop(0) if self.seeds else None)
        return obs

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or truncated, info

    def close(self):
        self.env.close()


def check_checkout(path: Path) -> None:
    missing = [f for f in OFFICIAL_FILES if not (path / f).is_file()]
    if missing:
        raise SystemExit(
            f"error: --official {path} is not a checkout of github.com/kzl/decision-transformer"
            f" (no {missing[0]}); get one with: git clone "
            f"https://github.com/kzl/decision-transformer {path}"
        )


@contextlib.contextmanager
def _official_compat(make_env):
    """Run-time patches for importing and building the official code on current libraries;
    undone on exit (unicomp, in the same process, must not see them)."""
    import transformers
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    def _unused(*args, **kwargs):
        raise NotImplementedError("not used by the Decision Transformer")

    gym = types.ModuleType("gym")
    gym.make = make_env  # experiment.py: gym.make('Hopper-v3') (only its spaces are read)
    wandb = types.ModuleType("wandb")  # imported by experiment.py; unused without -w
    parallel = types.ModuleType("transformers.utils.model_parallel_utils")
    parallel.assert_device_map = parallel.get_device_map = _unused  # model parallelism only
    # transformers.file_utils: ModelOutput and docstring decorators, whose 4.5 arguments
    # (tokenizer_class=...) today's decorators refuse; they only write __doc__.
    file_utils = types.ModuleType("transformers.file_utils")
    file_utils.ModelOutput = transformers.utils.ModelOutput

    def _keep_doc(*args, **kwargs):
        return lambda fn: fn

    for name in (
        "add_code_sample_docstrings",
        "add_start_docstrings",
        "add_start_docstrings_to_model_forward",
        "replace_return_docstrings",
    ):
        setattr(file_utils, name, _keep_doc)
    modules = {
        "gym": gym,
        "wandb": wandb,
        parallel.__name__: parallel,
        file_utils.__name__: file_utils,
    }
    # Names trajectory_gpt2.py imports from transformers.modeling_utils (transformers 4.5).
    names = {
        "Conv1D": pytorch_utils.Conv1D,
        "SequenceSummary": _unused,
        "find_pruneable_heads_and_indices": _unused,
        "prune_conv1d_layer": _unused,
    }
    saved_modules = {k: sys.modules.get(k) for k in modules}
    added = [k for k in names if not hasattr(modeling_utils, k)]
    had_n_ctx = hasattr(transformers.GPT2Config, "n_ctx")
    sys.modules.update(modules)
    for k in added:
        setattr(modeling_utils, k, names[k])
    if not had_n_ctx:
        transformers.GPT2Config.n_ctx = 1024  # GPT2Config's n_ctx default until its removal
    try:
        yield
    finally:
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k in added:
            delattr(modeling_utils, k)
        if not had_n_ctx:
            del transformers.GPT2Config.n_ctx


def load_official(path: Path, make_env) -> types.SimpleNamespace:
    """Import gym/experiment.py (as a module: its ``__main__`` block does not run) and the
    modules it uses from the checkout."""
    check_checkout(path)
    root = str((path / "gym").resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    with _official_compat(make_env):
        spec = importlib.util.spec_from_file_location(
            "official_experiment", f"{root}/experiment.py"
        )
        experiment = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(experiment)
        from decision_transformer.evaluation import evaluate_episodes
        from decision_transformer.models import trajectory_gpt2

    def get_head_mask(self, head_mask, num_layers):  # PreTrainedModel's, removed in 5.x
        if head_mask is not None:
            raise NotImplementedError("head masks are not used by the Decision Transformer")
        return [None] * num_layers

    def init_weights(self):  # transformers 4.5's: today's also ties weights it cannot find
        self.apply(self._init_weights)

    trajectory_gpt2.GPT2PreTrainedModel.get_head_mask = get_head_mask
    trajectory_gpt2.GPT2PreTrainedModel.init_weights = init_weights
    return types.SimpleNamespace(
        experiment=experiment,
        evaluate_episode_rtg=evaluate_episodes.evaluate_episode_rtg,
        compat=lambda: _official_compat(make_env),
    )


def write_official_pickle(dataset, folder: Path, name: str) -> None:
    """The data set as the official code reads it: data/<env>-<dataset>-v2.pkl, a list of
    paths with D4RL's fields and types (written by its gym/data/download_d4rl_datasets.py)."""
    paths = []
    for e in dataset.episodes:
        T = len(e)
        path = {
            "observations": e.states.astype(np.float32),
            "actions": e.actions.astype(np.float32),
            "rewards": e.rewards.astype(np.float32),
            "terminals": e.terminations.astype(bool),
        }
        if len(e.observations) > T:
            path["next_observations"] = e.observations[1 : T + 1].astype(np.float32)
        paths.append(path)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    with open(folder / "data" / f"{name}.pkl", "wb") as f:
        pickle.dump(paths, f)


def official_trainer(official, dataset, args):
    """Run experiment() with experiment.py's defaults (the paper's settings) and
    max_iters=0; return the SequenceTrainer it built (get_batch, model, AdamW, scheduler)."""
    made = []

    class Recorded(official.experiment.SequenceTrainer):  # the official class, kept as is
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    variant = dict(
        env="hopper",
        dataset="bench",
        mode="normal",
        K=20,
        pct_traj=1.0,
        batch_size=64,
        model_type="dt",
        embed_dim=128,
        n_layer=3,
        n_head=1,
        activation_function="relu",
        dropout=0.1,
        learning_rate=1e-4,
        weight_decay=1e-4,
        warmup_steps=10000,
        num_eval_episodes=0,
        max_iters=0,  # build everything, train nothing
        num_steps_per_iter=args.train_steps,
        device="cpu",
        log_to_wandb=False,
    )
    cwd = os.getcwd()
    module_globals = official.experiment.__dict__
    original = module_globals["SequenceTrainer"]
    with tempfile.TemporaryDirectory() as tmp:
        write_official_pickle(dataset, Path(tmp), "hopper-bench-v2")
        os.chdir(tmp)  # experiment() reads data/hopper-bench-v2.pkl
        module_globals["SequenceTrainer"] = Recorded
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        try:
            with official.compat(), contextlib.redirect_stdout(sys.stderr):
                official.experiment.experiment("bench", variant=variant)
        finally:
            module_globals["SequenceTrainer"] = original
            os.chdir(cwd)
    (trainer,) = made
    trainer.eval_fns = []  # train_iteration would evaluate after its steps
    return trainer


def copy_into_official(model, official_model) -> None:
    """Load unicomp's DT weights into the official model: the same modules under the same
    names (GPT-2 blocks, embed_timestep/return/state/action, embed_ln, predict_action); the
    official model's unused predict_state/predict_return and its causal-mask buffers stay."""
    ours = model.state_dict()
    theirs = official_model.state_dict()
    missing = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if missing:
        raise SystemExit(f"error: cannot copy weights into the official model: {missing[:5]}")
    official_model.load_state_dict(ours, strict=False)


# --- unicomp ---------------------------------------------------------------------------------
def unicomp_trainer(task, args):
    """A step of unicomp.train.train's loop (one process, no accumulation), from its pieces."""
    from unicomp.config import TrainConfig
    from unicomp.models.decision_transformer import build_decision_transformer
    from unicomp.tasks.base import iter_chunks
    from unicomp.train import lr_lambda, make_optimizer

    cfg = TrainConfig(
        steps=10**9,
        batch_size=64,
        lr=1e-4,
        weight_decay=1e-4,
        warmup_steps=10000,
        grad_clip=0.25,
        precision="fp32",
        device="cpu",
        seed=args.seed,
        progress=False,
    )
    torch.manual_seed(args.seed)
    model = build_decision_transformer(task.spec.d_in, task.act_dim)  # the paper's gym DT
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = {"step": 0, "loss": 0.0}

    def run(n: int) -> None:
        model.train()
        for _ in range(n):
            batch = task.train_batch(state["step"], cfg.batch_size, cfg.seed)
            for chunk in iter_chunks(batch, cfg.batch_size):
                chunk = chunk.to("cpu")
                out = model(chunk.x, chunk.mask)  # fp32: no autocast
                loss = task.loss(out, chunk.y, chunk.target_mask)
                loss.backward()
                task.correct(out.detach(), chunk.y, chunk.target_mask)
                state["loss"] += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1

    return model, run


# --- d3rlpy (its own virtual environment) ----------------------------------------------------
def d3rlpy_worker(args) -> None:
    """Runs under the d3rlpy venv's python: train and act, print one JSON line of timings."""
    import d3rlpy
    import gymnasium

    torch.set_num_threads(args.threads)
    d3rlpy.seed(args.seed)
    arrays = np.load(args.d3rlpy_worker)
    dataset = d3rlpy.dataset.MDPDataset(
        arrays["observations"],
        arrays["actions"],
        arrays["rewards"],
        arrays["terminals"],
        timeouts=arrays["timeouts"],
    )
    # The paper's settings, as d3rlpy's own reproduction script sets them: a linear state
    # embedding of width 128 (its encoder with one layer, no activation), AdamW with weight
    # decay, 10k warm-up steps and gradient clipping 0.25 inside the optimizer factory.
    config = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=64,
        context_size=20,
        learning_rate=1e-4,
        num_heads=1,
        num_layers=3,
        max_timestep=1000,
        attn_dropout=0.1,
        resid_dropout=0.1,
        embed_dropout=0.1,
        activation_type="relu",
        encoder_factory=d3rlpy.models.VectorEncoderFactory(
            hidden_units=[128], exclude_last_activation=True
        ),
        optim_factory=d3rlpy.optimizers.AdamWFactory(
            weight_decay=1e-4,
            clip_grad_norm=0.25,
            lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(warmup_steps=10000),
        ),
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(1 / 1000),
    )
    dt = config.create(device="cpu:0")
    dt.build_with_dataset(dataset)
    fit = dict(
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
        save_interval=10**9,
    )
    dt.fit(dataset, n_steps=5, n_steps_per_epoch=5, **fit)  # warm-up, not timed
    t0 = time.perf_counter()
    dt.fit(dataset, n_steps=args.train_steps, n_steps_per_epoch=args.train_steps, **fit)
    train_s = (time.perf_counter() - t0) / args.train_steps
    env_kwargs = json.loads(args.env_kwargs)
    env = gymnasium.make(args.env, max_episode_steps=args.max_steps, **env_kwargs)
    evals = {}
    for n in args.episode_counts:
        steps, t0 = 0, time.perf_counter()
        for i in range(n):
            actor = dt.as_stateful_wrapper(target_return=args.target)
            obs, _ = env.reset(seed=args.seed + i)
            reward, done = 0.0, False
            while not done:
                action = actor.predict(obs, reward)
                obs, reward, term, trunc, _ = env.step(action)
                steps += 1
                done = term or trunc
        evals[str(n)] = {"seconds": time.perf_counter() - t0, "steps": steps}
    env.close()
    print(json.dumps({"train_s_per_step": train_s, "eval": evals, "d3rlpy": d3rlpy.__version__}))


# --- the benchmark ---------------------------------------------------------------------------
def median(values):
    return statistics.median(values) if values else float("nan")


def count_flops(fn) -> float:
    """FLOPs of the matrix products (and attention) ``fn`` runs, as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak(n: int = 1024, reps: int = 5) -> float:
    """Best observed fp32 FLOP/s of an (n x n) @ (n x n) product on this many threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def compute_floor(model, task, official_model, trainer, args) -> dict:
    """What the arithmetic alone costs: FLOPs of a training step and of one evaluation step
    (past K steps), on both sides, and the machine's fp32 matmul peak. The probes run on
    copies or in eval mode, so they change nothing that is timed."""
    import copy

    from unicomp.rl.evaluate import DTAgent

    probe = copy.deepcopy(model).train()

    def unicomp_step():
        batch = task.train_batch(0, 64, args.seed)
        task.loss(probe(batch.x, batch.mask), batch.y, batch.target_mask).backward()

    K, obs_dim, act_dim = task.context, task.spec.d_in, task.act_dim
    off_probe = copy.deepcopy(official_model).train()
    states, actions, _, _, rtg, timesteps, mask = trainer.get_batch(64)

    def official_step():  # SequenceTrainer.train_step's forward and backward
        _, pred, _ = off_probe(states, actions, None, rtg[:, :-1], timesteps, attention_mask=mask)
        real = mask.reshape(-1) > 0
        target = actions.reshape(-1, act_dim)[real]
        ((pred.reshape(-1, act_dim)[real] - target) ** 2).mean().backward()

    g = torch.Generator().manual_seed(0)
    n = K + 5  # a history longer than K: the official code keeps it all, slices the last K
    hist = (
        torch.randn(n, obs_dim, generator=g),
        torch.randn(n, act_dim, generator=g),
        torch.zeros(n),
        torch.randn(1, n, 1, generator=g),
        torch.arange(n).reshape(1, n),
    )
    official_model.eval()
    floor = {
        "matmul_peak_gflops": matmul_peak() / 1e9,
        "train_gflop_official": count_flops(official_step) / 1e9,
        "train_gflop_unicomp": count_flops(unicomp_step) / 1e9,
        "eval_mflop_official": count_flops(lambda: official_model.get_action(*hist)) / 1e6,
    }
    obs = np.random.default_rng(0).standard_normal((1, obs_dim))
    model.eval()
    for window in ("exact", "rolling"):
        agent = DTAgent(model, args.target, None, None, 1000.0, window=window)
        agent.reset(1)
        for _ in range(K + 2):
            agent.act(obs)
            agent.observe(np.ones(1))
        floor[f"eval_mflop_{window}"] = count_flops(lambda agent=agent: agent.act(obs)) / 1e6
    return floor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, help="a checkout of kzl/decision-transformer")
    p.add_argument("--data", help="a unicomp trajectory data set (Minari folder or D4RL .hdf5)")
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--episodes", default="10,50", help="episode counts to evaluate, e.g. 10,50")
    p.add_argument("--max-steps", type=int, default=250, help="episode length cap")
    p.add_argument("--train-steps", type=int, default=50, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    p.add_argument("--target", type=float, default=3600.0, help="target return (hopper: 3600)")
    p.add_argument("--n-envs", type=int, default=0, help="unicomp's vector env size (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--env-kwargs",
        default='{"terminate_when_unhealthy": false}',
        help="JSON: gymnasium.make keyword arguments, for every side",
    )
    p.add_argument("--d3rlpy-python", help="python of a venv with d3rlpy: add it as a reference")
    p.add_argument("--skip-eval", action="store_true", help="time training only")
    p.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    p.add_argument("--d3rlpy-worker", help=argparse.SUPPRESS)  # internal: data.npz to train on
    args = p.parse_args()
    args.episode_counts = [int(n) for n in args.episodes.split(",") if n]
    if args.d3rlpy_worker:
        d3rlpy_worker(args)
        return
    if args.official is None or args.data is None:
        p.error("--official PATH and --data PATH are required")
    check_checkout(args.official)
    torch.set_num_threads(args.threads)

    from unicomp.experiments.external import flat_arrays
    from unicomp.rl.dt_task import DTTask
    from unicomp.rl.envs import make_env
    from unicomp.rl.evaluate import DTAgent, run_episodes
    from unicomp.rl.trajectories import read_dataset

    env_kwargs = json.loads(args.env_kwargs)

    def gym_make(env_id, **kw):  # the official code's gym.make, on gymnasium
        return OldGymEnv(make_env(args.env, **env_kwargs))

    official = load_official(args.official, gym_make)
    dataset = read_dataset(args.data, args.env)
    task = DTTask(dataset, env_id=args.env)
    trainer = official_trainer(official, dataset, args)
    model, unicomp_train = unicomp_trainer(task, args)
    print(
        f"data {dataset.source}: {len(dataset)} episodes, {dataset.n_steps} steps, "
        f"mean length {dataset.n_steps / len(dataset):.0f}",
        file=sys.stderr,
    )

    def official_train(n: int) -> None:
        trainer.train_iteration(num_steps=n, iter_num=0, print_logs=False)

    # warm-up, not timed: first calls allocate and fill caches
    official_train(3)
    unicomp_train(3)

    times: dict[str, list[float]] = {}
    steps_of: dict[str, int] = {}

    def timed(name: str, fn, steps: int | None = None) -> None:
        t0 = time.perf_counter()
        counted = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        steps_of[name] = counted if counted is not None else steps
        per_step = times[name][-1] / steps_of[name]
        print(f"  {name}: {per_step * 1000:.3f} ms per step", file=sys.stderr)

    d3rlpy_runs: list[dict] = []
    npz = None
    if args.d3rlpy_python:
        npz = Path(tempfile.mkdtemp()) / "data.npz"
        np.savez(npz, **flat_arrays(dataset))  # as `unicomp dt external` exports them

    def d3rlpy_round() -> None:
        cmd = [
            args.d3rlpy_python,
            __file__,
            "--d3rlpy-worker",
            str(npz),
            "--env",
            args.env,
            "--episodes",  # the first count only: d3rlpy acts one episode at a time, slowly
            str(args.episode_counts[0]) if args.episode_counts and not args.skip_eval else "",
            "--max-steps",
            str(args.max_steps),
            "--train-steps",
            str(args.train_steps),
            "--seed",
            str(args.seed),
            "--target",
            str(args.target),
            "--threads",
            str(args.threads),
            "--env-kwargs",
            args.env_kwargs,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if out.returncode:
            raise SystemExit(f"error: the d3rlpy worker failed:\n{out.stderr[-3000:]}")
        d3rlpy_runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    # 1. training, rounds interleaved
    train_items = [
        ("train official", lambda: official_train(args.train_steps)),
        ("train unicomp", lambda: unicomp_train(args.train_steps)),
    ]
    if args.d3rlpy_python:
        train_items.append(("d3rlpy", d3rlpy_round))
    for r in range(args.rounds):
        for name, fn in train_items if r % 2 == 0 else train_items[::-1]:
            if name == "d3rlpy":
                fn()  # times itself (training and evaluation, in its own process)
            else:
                timed(name, fn, args.train_steps)
        print(f"training round {r + 1}/{args.rounds} done", file=sys.stderr)

    # 2. evaluation: the unicomp model after training, its weights in the official model
    model.eval()
    official_model = trainer.model
    copy_into_official(model, official_model)
    official_model.eval()
    norm = task.normalization()
    mean = np.array(norm["state_mean"], dtype=np.float32)
    std = np.array(norm["state_std"], dtype=np.float32)
    scale = norm["rtg_scale"]
    check = task.split("val")[:64]
    with torch.no_grad():
        ours = model(check.x, check.mask)
        _, theirs, _ = official_model(
            check.x["states"],
            check.x["actions"],
            None,
            check.x["returns_to_go"],
            check.x["timesteps"],
            attention_mask=check.mask,
        )
    real = check.mask.bool()
    weights_diff = float((ours[real] - theirs[real]).abs().max())
    floor = compute_floor(model, task, official_model, trainer, args)

    returns: dict[str, list[float]] = {}

    def official_eval(n: int):
        env = OldGymEnv(
            make_env(args.env, max_episode_steps=args.max_steps, **env_kwargs),
            seeds=range(args.seed, args.seed + n),
        )

        def run() -> int:
            rets, lengths = [], []
            for _ in range(n):
                with torch.no_grad():  # as experiment.py's eval_episodes
                    ret, length = official.evaluate_episode_rtg(
                        env,
                        task.spec.d_in,
                        task.act_dim,
                        official_model,
                        max_ep_len=1000,  # experiment.py's; the env's cap ends episodes first
                        scale=scale,
                        target_return=args.target / scale,
                        mode="normal",
                        state_mean=mean,
                        state_std=std,
                        device="cpu",
                    )
                rets.append(float(ret))
                lengths.append(int(length))
            returns[f"eval{n} official"] = rets
            return sum(lengths)

        return run, env

    def unicomp_eval(n: int, window: str):
        def run() -> int:
            agent = DTAgent(model, args.target, mean, std, scale, window=window)
            res = run_episodes(
                args.env,
                agent,
                n,
                seed=args.seed,
                n_envs=args.n_envs or n,
                max_episode_steps=args.max_steps,
                env_kwargs=env_kwargs,
            )
            returns[f"eval{n} {window}"] = res.returns.tolist()
            return int(res.lengths.sum())

        return run

    if not args.skip_eval:
        envs = []
        eval_items = []
        for n in args.episode_counts:
            run, env = official_eval(n)
            envs.append((env, n))
            eval_items += [
                (f"eval{n} official", run),
                (f"eval{n} exact", unicomp_eval(n, "exact")),
                (f"eval{n} rolling", unicomp_eval(n, "rolling")),
            ]
        for r in range(args.rounds):
            for env, n in envs:  # the same seeds again, every round
                env.seeds = list(range(args.seed, args.seed + n))
            for name, fn in eval_items if r % 2 == 0 else eval_items[::-1]:
                timed(name, fn)
            print(f"evaluation round {r + 1}/{args.rounds} done", file=sys.stderr)
        for env, _ in envs:
            env.close()

    data_summary = {
        "source": dataset.source,
        "episodes": len(dataset),
        "steps": dataset.n_steps,
        "mean_length": dataset.n_steps / len(dataset),
    }
    report(args, times, steps_of, returns, d3rlpy_runs, weights_diff, data_summary, floor)


def report(args, times, steps_of, returns, d3rlpy_runs, weights_diff, data_summary, floor) -> None:
    import gymnasium
    import mujoco

    def cpu_model() -> str:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
            return next(
                ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln
            )
        except (OSError, StopIteration):
            return platform.processor()

    result: dict = {
        "setup": {
            "cpu": cpu_model(),
            "threads": args.threads,
            "torch": torch.__version__,
            "gymnasium": gymnasium.__version__,
            "mujoco": mujoco.__version__,
            "precision": {"official": "fp32", "unicomp": "fp32 (no autocast)"},
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("d3rlpy_worker",)},
        "weights_max_action_diff": weights_diff,
    }
    result["args"]["official"] = str(args.official)
    commit = subprocess.run(
        ["git", "-C", str(args.official), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    result["official_commit"] = commit.stdout.strip() or None
    result["data"] = data_summary
    result["compute"] = floor
    print(
        f"\n{args.env}, data {args.data}, {args.rounds} rounds, torch {torch.__version__} "
        f"({args.threads} thread), fp32 on both sides; same weights in evaluation: largest "
        f"action difference {weights_diff:.2g}\n"
    )
    print("| measurement | side | median s/step | steps/s | vs official | rounds (s) |")
    print("|---|---|---|---|---|---|")
    rows, table = {}, []
    groups = ["train"] + [f"eval{n}" for n in args.episode_counts if not args.skip_eval]
    for group in groups:
        base = None
        sides = ["official", "unicomp"] if group == "train" else ["official", "exact", "rolling"]
        for side in sides:
            name = f"{group} {side}"
            if name not in times:
                continue
            per_step = [t / steps_of[name] for t in times[name]]
            s = median(per_step)
            base = base or s
            rows[name] = {
                "s_per_step": s,
                "steps_per_s": 1 / s,
                "speedup": base / s,
                "round_seconds": times[name],
                "steps_per_round": steps_of[name],
            }
            if name in returns:
                rows[name]["return_mean"] = float(np.mean(returns[name]))
            label = "training steps" if group == "train" else f"evaluation, {group[4:]} episodes"
            cells = [label, side, f"{s * 1000:.3f} ms", f"{1 / s:.1f}", f"{base / s:.2f}x",
                     ", ".join(f"{t:.2f}" for t in times[name])]  # fmt: skip
            table.append(cells)
            print("| " + " | ".join(cells) + " |")
        if d3rlpy_runs:
            if group == "train":
                per_step = [d["train_s_per_step"] for d in d3rlpy_runs]
            else:
                n = group[4:]
                per_step = [
                    d["eval"][n]["seconds"] / d["eval"][n]["steps"]
                    for d in d3rlpy_runs
                    if n in d["eval"]
                ]
            if not per_step:
                continue
            s = median(per_step)
            rows[f"{group} d3rlpy"] = {"s_per_step": s, "steps_per_s": 1 / s, "speedup": base / s}
            cells = ["", f"d3rlpy {d3rlpy_runs[0]['d3rlpy']}", f"{s * 1000:.3f} ms", f"{1 / s:.1f}",
                     f"{base / s:.2f}x", "-"]  # fmt: skip
            table.append(cells)
            print("| " + " | ".join(cells) + " |")
    result["results"] = rows
    peak = floor["matmul_peak_gflops"]
    notes = [
        f"Arithmetic (torch's FLOP counter; fp32 matmul peak of this core {peak:.0f} GFLOP/s):"
        f" a training step is {floor['train_gflop_official']:.2f} GFLOP (official), "
        f"{floor['train_gflop_unicomp']:.2f} GFLOP (unicomp), at least "
        f"{floor['train_gflop_unicomp'] / peak * 1000:.0f} ms at the peak; one environment "
        f"step past K costs {floor['eval_mflop_official']:.1f} MFLOP (official), "
        f"{floor['eval_mflop_exact']:.1f} (exact), {floor['eval_mflop_rolling']:.1f} (rolling)."
    ]
    for n in args.episode_counts:
        a, b = returns.get(f"eval{n} official"), returns.get(f"eval{n} exact")
        if a and b:
            diff = float(np.max(np.abs(np.array(a) - np.array(b))))
            result.setdefault("return_diff_official_vs_exact", {})[str(n)] = diff
            notes.append(
                f"{n} episodes: mean return official {np.mean(a):.1f}, exact {np.mean(b):.1f}, "
                f"rolling {np.mean(returns[f'eval{n} rolling']):.1f}; largest per-episode "
                f"difference official vs exact {diff:.3g}."
            )
    print("\n" + "\n".join(notes))
    targets = {}
    if "train unicomp" in rows:
        targets["train"] = rows["train unicomp"]["speedup"]
    n0 = args.episode_counts[0] if args.episode_counts else None
    for window in ("exact", "rolling"):
        if f"eval{n0} {window}" in rows:
            targets[f"eval{n0} {window}"] = rows[f"eval{n0} {window}"]["speedup"]
    result["targets"] = {
        k: {"speedup": v, "target": TARGETS[k.split()[-1]], "met": v >= TARGETS[k.split()[-1]]}
        for k, v in targets.items()
    }
    print()
    for k, v in result["targets"].items():
        met = "met" if v["met"] else "NOT met"
        print(f"target {k}: {v['speedup']:.2f}x (target {v['target']}x): {met}")
    print(json.dumps(result))
    if args.out:
        about = (
            f"{args.env}, data: {data_summary['episodes']} episodes, {data_summary['steps']} "
            f"steps (mean length {data_summary['mean_length']:.0f}); K = 20, 3 layers, width "
            f"128, 1 head, batch 64; fp32 on both sides, {args.threads} torch thread(s); "
            f"{args.rounds} interleaved rounds of {args.train_steps} training steps and of "
            f"each evaluation (episodes capped at {args.max_steps} steps, episode i reset with "
            f"seed {args.seed} + i, target {args.target:g}); medians over rounds; official code "
            f"at commit {(result['official_commit'] or 'unknown')[:7]}; the same weights on "
            f"both sides in evaluation (largest action difference {weights_diff:.2g}). "
            + " ".join(notes)
        )
        columns = ["measurement", "side", "median per step", "steps/s", "vs official",
                   "rounds (s)"]  # fmt: skip
        write_record(args.out, about, columns, table, **result)


if __name__ == "__main__":
    main()
