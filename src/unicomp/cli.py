"""Command line: ``unicomp list | demo | fpt train | fpt ablate | fpt attention | fpt
export-adapter | perceiver train | perceiver search-latents | dt collect | dt train | dt eval |
dt compare | ts baseline | ts list | serve``.

Errors a user can act on (unknown names, missing weights, bad files) print as one line
``unicomp: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

import unicomp
import unicomp.experiments  # noqa: F401 (its registry entries: run:, the offline-RL methods)
from unicomp.backbones.catalog import BACKBONES, FREEZE_POLICIES
from unicomp.config import (
    MAX_STEPS,
    SEVERAL_DATA,
    FPTConfig,
    HelpFormatter,
    PerceiverConfig,
    RegisteredNames,
    add_dataclass_args,
    comma_numbers,
    given_once,
)
from unicomp.errors import UnicompError
from unicomp.registry import load_target
from unicomp.tasks.catalog import TASKS


def cmd_list(args: argparse.Namespace) -> None:
    if args.task:
        _list_task(args.task)
        return
    for title, registry in (
        ("tasks", TASKS),
        ("backbones", BACKBONES),
        ("freeze policies", FREEZE_POLICIES),
    ):
        print(f"{title}:")
        for entry in registry:
            extra = ""
            if registry is FREEZE_POLICIES:
                extra = f" [trains: {', '.join(sorted(entry.load()))}]"
            print(f"  {entry.name:<16} {entry.help}{extra}")
    print(
        "  (also: random:<name>; stats:<name>, random weights matched per tensor to the "
        "pretrained ones' mean and std;\n   lstm or lstm:<layers>x<width>, a random LSTM "
        "(default 3x768); run:<DIR>, the backbone of a finished FPT run;\n   any hub id "
        "owner/name, or a local model folder)"
    )
    from unicomp.models.perceiver_pretrained import KNOWN
    from unicomp.rl.collect import SUITES

    print("perceiver checkpoints (perceiver train --pretrained NAME):")
    for name, hub_id in KNOWN.items():
        print(f"  {name:<26} {hub_id}")
    print("  (also: any hub id owner/name, or a local folder of a transformers Perceiver)")
    print("dt collect suites (dt collect --env ENV --suite NAME):")
    for env, suites in SUITES.items():
        print(f"  {env + '-v5':<16} {', '.join(suites)}")
    print(
        "unicomp list --task NAME: a task's training defaults and --task-arg keys (NAME dt: DT's)"
    )


def _list_task(name: str) -> None:
    """``unicomp list --task NAME``: the training defaults a run of the task starts from (before
    --config and flags) and the task's constructor arguments; ``dt``: the DT defaults."""
    from unicomp.config import TrainConfig, task_train_defaults
    from unicomp.experiments.common import task_arguments, task_defaults
    from unicomp.experiments.dt import dt_task_defaults
    from unicomp.experiments.perceiver import perceiver_task_defaults

    base = TrainConfig()
    if name == "dt":
        print("dt: Decision Transformer / behaviour cloning (unicomp dt train; no --task-arg)")
        sources = {"dt train": (dt_task_defaults, "DT")}
    else:
        print(f"{name}: {TASKS.entry(name).help}")
        sources = {"fpt train": (task_defaults, "task"), "perceiver train": None}
    first, (defaults, label) = next(iter(sources.items()))
    cfg = task_train_defaults(defaults, name)
    print(f"training defaults ({first}; --config and flags override them):")
    for key, value in vars(cfg).items():
        mark = f"({label})" if value != getattr(base, key) else ""
        print(f"  {key:<20} {_value(value):<10} {mark}".rstrip())
    fraction = defaults(name).get("warmup_fraction")
    if fraction is not None:
        print(f"  warmup_steps: {fraction:.0%} of steps where not given (--warmup-steps, --config)")
    if "perceiver train" in sources:
        other = task_train_defaults(perceiver_task_defaults, name)
        diffs = [f"{k} {_value(v)}" for k, v in vars(other).items() if v != getattr(cfg, k)]
        print(f"perceiver train: {'differs: ' + ', '.join(diffs) if diffs else 'the same'}")
        print("task arguments (--task-arg KEY=VALUE):")
        for key, value in task_arguments(TASKS.entry(name).load()).items():
            print(f"  {key:<20} {_value(value)}")


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _resume_from_run_folder(args: argparse.Namespace) -> None:
    """``--resume --out DIR`` continues the run in DIR from its own config.yaml."""
    if args.resume:
        if not args.out:
            raise UnicompError("--resume needs --out DIR, the folder of the run to continue")
        args.config = args.config or str(Path(args.out) / "config.yaml")


def _defaults(target: str):
    """The training-defaults function ``target`` ("module:function", e.g.
    "unicomp.experiments.common:task_defaults"), imported when first called (--help printing
    the resolved defaults), not when the parser is built."""
    module, _, name = target.partition(":")
    if not (module and name):  # a wrong name would only show as defaults missing from --help
        raise ValueError(f"training defaults {target!r}: expected 'module:function'")

    def call(task: str) -> dict:
        return load_target(target)(task)

    return call


def _add_train_command(
    group,
    name: str,
    help: str,
    cls: type,
    func,
    defaults: str = "unicomp.experiments.common:task_defaults",
) -> argparse.ArgumentParser:
    """A ``train``-like subcommand: --config, --resume and one flag per config field; --help
    states the defaults resolved with ``defaults`` (see ``_defaults``)."""
    p = group.add_parser(name, help=help, formatter_class=HelpFormatter)
    p.add_argument("--config", help="YAML config (a preset in configs/ or a run's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (its files only)"
    )
    add_dataclass_args(p, cls, _defaults(defaults))
    p.set_defaults(func=func)
    return p


def cmd_fpt_train(args: argparse.Namespace) -> None:
    from unicomp.config import resolve
    from unicomp.experiments.common import task_defaults
    from unicomp.experiments.fpt import run_fpt

    _resume_from_run_folder(args)
    cfg = resolve(FPTConfig, args, task_defaults)
    metrics = run_fpt(cfg, resume=args.resume, overwrite=args.overwrite)
    _print_run(cfg.kind, metrics, cfg.out)


def _print_run(kind: str, metrics: dict, folder: str | Path) -> None:
    """What a command that trains a run prints: its kind's summary of the metrics
    (unicomp.experiments.kinds), then the run folder."""
    from unicomp.experiments.kinds import KINDS

    print(json.dumps(KINDS[kind].summary_of(metrics), indent=2))
    print(f"run folder: {folder}")


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return comma_numbers(text, int, "--seeds")


def cmd_fpt_ablate(args: argparse.Namespace) -> None:
    from unicomp.tools.ablate import describe, load_suite, report_suite, run_suite

    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise UnicompError("--jobs and --threads must be >= 1")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise UnicompError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
    suite = load_suite(args.suite, Path(args.out), _int_list(args.seeds), args.protocol, args.steps)
    if args.dry_run:
        print(describe(suite))
        return
    if args.report_only:
        report_suite(suite)
        print((suite.out / "results.md").read_text())
        return
    result = run_suite(suite, jobs=args.jobs, threads=args.threads)
    print((suite.out / "results.md").read_text())
    failed = [c["key"] for c in result["cells"] if c["status"] == "failed"]
    if failed:
        raise UnicompError(
            f"{len(failed)} cell(s) failed: {', '.join(failed)}; see {suite.out}/logs"
        )


def cmd_fpt_attention(args: argparse.Namespace) -> None:
    from unicomp.tools.attention import attention_command

    result = attention_command(args.run, example=args.example, split=args.split, out=args.out)
    print(json.dumps(result, indent=2))


_ATTENTION_HELP = """\
Runs example N of a finished FPT run's split through its trained model (best.safetensors,
eager attention, fp32 on the CPU) and writes:
  FILE.png  one heatmap per layer (mean over heads): query position (y) by key position (x),
            over the real tokens; the input tokens as tick labels where short (bit tasks:
            the bits), the query rows the head reads in red; predicted and true outputs and
            the run folder, backbone and freeze policy in the title
  FILE.npz  the raw maps next to it: maps (layers, heads, T, T), each row a query's weights
            over the keys (summing to 1 over the real keys), with mask, inputs, target,
            prediction, logits; in Python: numpy.load("FILE.npz")["maps"]
FILE is RUN/attention-<split>-<N>.png unless --out says otherwise. LSTM runs have no
attention (an error).

example:
  unicomp fpt attention runs/bit-xor-minilm-l6-paper-s0 --example 3 --out /tmp/xor-3.png
"""


def cmd_fpt_export_adapter(args: argparse.Namespace) -> None:
    from unicomp.serving.adapters import export_adapter

    summary = export_adapter(args.run, args.output)
    if summary.get("warning"):
        print(f"unicomp: warning: {summary['warning']}", file=sys.stderr)
    print(json.dumps(summary, indent=2))


def cmd_serve(args: argparse.Namespace) -> None:
    from unicomp.serving.serve import ServeConfig, serve

    if args.threads is not None and args.threads < 1:
        raise UnicompError(f"serve: --threads must be >= 1, got {args.threads}")
    cfg = ServeConfig(  # checks every value's range, before anything loads
        backbone=args.backbone,
        adapters=Path(args.adapters),
        seed=args.seed,
        batch_window=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
        max_inputs=args.max_inputs,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        rescan=args.rescan_seconds,
        device=args.device,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(cfg, host=args.host, port=args.port)


def _add_serve_command(sub) -> None:
    from dataclasses import fields

    from unicomp.serving.serve import ServeConfig

    default = {f.name: f.default for f in fields(ServeConfig)}  # one source for the defaults
    p = sub.add_parser(
        "serve",
        help="serve every adapter file of a folder over HTTP from one shared backbone",
        description='GET /tasks, POST /tasks/NAME/predict {"inputs": [...]}, GET /stats, '
        "/docs; see docs/serving.md",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--backbone", required=True, help="the backbone every adapter was trained on")
    p.add_argument("--adapters", required=True, help="folder of adapter files (*.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (1-65535)")
    p.add_argument(
        "--seed", type=int, default=default["seed"], help="the backbone's seed (random:/stats:)"
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=default["batch_window"] * 1000,
        help="micro-batching window",
    )
    p.add_argument(
        "--max-batch", type=int, default=default["max_batch"], help="inputs per model batch"
    )
    p.add_argument("--max-inputs", type=int, help="inputs per request (default: --max-batch)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=default["max_tokens"],
        help="input tokens per request, and padded tokens per model batch",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=default["max_queue"],
        help="requests waiting per task; more get 503",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=default["request_timeout"],
        help="seconds a request waits; then 503",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=default["max_body_bytes"], help="request body limit"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=default["max_connections"],
        help="open connections at once",
    )
    p.add_argument(
        "--rescan-seconds",
        type=float,
        default=default["rescan"],
        help="folder scan interval (0: on request)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--device",
        default=default["device"],
        help="where the models run: auto | cpu | cuda | cuda:N",
    )
    p.set_defaults(func=cmd_serve)


def _resolve_perceiver(args: argparse.Namespace):
    from unicomp.config import PerceiverConfig, resolve
    from unicomp.experiments.perceiver import perceiver_task_defaults

    return resolve(PerceiverConfig, args, perceiver_task_defaults)


def cmd_perceiver_train(args: argparse.Namespace) -> None:
    from unicomp.experiments.perceiver import run_perceiver

    _resume_from_run_folder(args)
    cfg = _resolve_perceiver(args)
    metrics = run_perceiver(cfg, resume=args.resume, overwrite=args.overwrite)
    _print_run(cfg.kind, metrics, cfg.out)


def cmd_perceiver_search(args: argparse.Namespace) -> None:
    from unicomp.tools.latent_search import search_latents

    latents = comma_numbers(args.latents, int, "--latents")
    tolerance = args.tolerance
    del args.latents, args.tolerance  # not PerceiverConfig fields
    cfg = _resolve_perceiver(args)
    result = search_latents(cfg, latents, tolerance)
    print(result["table"], end="")
    print(
        f"chosen num_latents: {result['chosen_num_latents']} ({result['selected_by']}, "
        f"tolerance {tolerance}); table in {result['out']}/latents.md"
    )


def cmd_dt_collect(args: argparse.Namespace) -> None:
    from unicomp.rl.collect_options import CollectOptions, run_collect

    names = [f.name for f in dataclasses.fields(CollectOptions)]
    record = run_collect(CollectOptions(**{name: getattr(args, name) for name in names}))
    keys = ("env_id", "suite", "episodes", "steps", "return_mean", "return_std", "return_min")
    keys += ("return_max", "normalized_score_mean", "training_steps", "stop_reason", "seconds")
    print(json.dumps({k: record[k] for k in keys if k in record}, indent=2))
    print(f"data set: {args.out} (Minari, with collection.json)")


def cmd_dt_train(args: argparse.Namespace) -> None:
    from unicomp.config import DTConfig, resolve
    from unicomp.experiments.dt import dt_task_defaults, run_dt

    _resume_from_run_folder(args)
    cfg = resolve(DTConfig, args, dt_task_defaults)
    metrics = run_dt(cfg, resume=args.resume, overwrite=args.overwrite)
    _print_run(cfg.kind, metrics, cfg.out)


def _targets(text: str | None) -> list[float] | None:
    if not text:
        return None
    return comma_numbers(text, float, "--eval-targets")


def cmd_dt_eval(args: argparse.Namespace) -> None:
    import torch

    from unicomp.experiments.dt import EvalSettings, evaluate_run
    from unicomp.experiments.kinds import evaluation_summary

    if args.threads is not None and args.threads < 1:
        raise UnicompError(f"dt eval: --threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    evaluation = EvalSettings(  # None: the run's own
        episodes=args.eval_episodes,
        seed=args.eval_seed,
        n_envs=args.eval_envs,
        max_steps=args.eval_max_steps or 0,
        window=args.eval_window,
        sample=None,
        targets=tuple(_targets(args.eval_targets) or ()),
    )
    result = evaluate_run(args.run, evaluation, out=args.out, device=args.device)
    keys = ("env", "algo", "train_steps", "episodes", "return_mean", "normalized_score_mean")
    summary = {k: result[k] for k in (*keys, "success_rate") if k in result}
    summary["eval"] = [evaluation_summary(e) for e in result["eval"]]
    print(json.dumps(summary, indent=2))
    print(f"written: {args.out or Path(args.run) / 'eval.json'}")


def cmd_dt_external(args: argparse.Namespace) -> None:
    from unicomp.experiments.dt import EvalSettings
    from unicomp.experiments.kinds import KINDS

    external = KINDS["external"]
    out = (
        Path(args.out)
        if args.out
        else external.function("default_out")(args.algo, args.data, args.seed)
    )
    metrics = external.function("run")(
        args.algo,
        args.data,
        out,
        env=args.env,
        steps=args.steps,
        seed=args.seed,
        evaluation=EvalSettings(
            episodes=args.eval_episodes,
            seed=args.eval_seed,
            n_envs=args.eval_envs,
            max_steps=args.eval_max_steps,
        ),
        python=args.d3rlpy_python,
        device=args.device,
        delayed_reward=args.delayed_reward,
    )
    _print_run(external.name, metrics, out)


def cmd_dt_compare(args: argparse.Namespace) -> None:
    from unicomp.runs import write_comparison

    text, _ = write_comparison(args.runs, args.out)
    print(text, end="")
    print(f"written: {Path(args.out).with_suffix('.md')}, {Path(args.out).with_suffix('.csv')}")


def _add_dt_commands(sub) -> None:
    dt = sub.add_parser("dt", help="Decision Transformer (offline RL)").add_subparsers(
        dest="sub", required=True
    )
    p = dt.add_parser(
        "collect",
        help="roll out a policy or a D4RL-like suite; write a Minari data set",
    )
    p.add_argument(
        "--env",
        required=True,
        help="gymnasium id, e.g. Hopper-v5; Atari: ALE/Breakout-v5 or breakout (the DT paper's "
        "preprocessing: 4-frame skip, 84x84 grayscale, 4 stacked frames, no sticky actions)",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--suite",
        choices=("random", "medium", "medium-replay", "expert", "medium-expert", "dqn-replay"),
        help="D4RL-like suite (Hopper-v5, HalfCheetah-v5; see docs/rl-agents.md); dqn-replay "
        "with --from-training: a learning DQN's whole experience, as DQN Replay holds it (any "
        "discrete-action environment; MinAtar: MinAtar/Breakout-v1, ...)",
    )
    what.add_argument("--agent", help="an SB3 model .zip or a zoo agent folder (<Env>_1/)")
    what.add_argument("--policy", choices=("random", "tqc", "sac", "ppo", "a2c", "td3", "dqn"))
    what.add_argument(
        "--dqn-replay",
        metavar="DIR",
        help="read a DQN Replay Dataset run (<Game>/<run>/replay_logs) instead of acting",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="continuous actions: Gaussian noise std; discrete: the chance of a uniform random "
        "action (epsilon-greedy) [0]",
    )
    p.add_argument("--episodes", type=int, help="episodes in all (not with --dqn-replay)")
    p.add_argument(
        "--transitions",
        type=int,
        help="--dqn-replay: steps to keep, split evenly over the checkpoints (the paper's 1%%: "
        "500000) [all]",
    )
    p.add_argument(
        "--buffers", help="--dqn-replay: checkpoint numbers, e.g. 0-49 or 40-49,3 [all found]"
    )
    p.add_argument(
        "--from-training",
        nargs="?",
        const=True,
        metavar="DIR",
        help="with --suite medium-replay: train SAC until the medium level and keep its whole "
        "replay buffer (D4RL's way); with --suite dqn-replay: train a DQN for --steps and keep "
        "its whole experience; with --suite medium or medium-expert: DIR is a medium-replay "
        "run's folder, whose final agent is rolled out (docs/rl-agents.md)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="--suite dqn-replay --from-training: environment steps the DQN learns for, all of "
        "them kept [500000, the DT paper's 1%% of DQN Replay per game]",
    )
    p.add_argument(
        "--medium-return",
        type=float,
        help="--from-training: the mean evaluation return that stops training [a third of the "
        "expert's: Hopper-v5 981, HalfCheetah-v5 4030]",
    )
    p.add_argument(
        "--max-train-steps",
        type=int,
        help="--from-training: stop there if the medium level is not reached [1000000]",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        help="--from-training: environment steps between evaluations [SAC 5000, DQN 50000]",
    )
    p.add_argument(
        "--eval-episodes", type=int, help="--from-training: episodes per evaluation [10]"
    )
    p.add_argument(
        "--learning-starts",
        type=int,
        help="--from-training: uniform random steps before learning [SAC 10000, "
        "rl-baselines3-zoo's; DQN 5000, MinAtar's]",
    )
    p.add_argument("--out", required=True, help="folder for the data set (must not hold one)")
    p.add_argument(
        "--agents",
        help="rl-trained-agents folder (<algo>/<Env>-v3_1/) for suites and --policy ALGO "
        "[$UNICOMP_DATA/sb3-agents]",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="episode i resets with seed + i; --from-training: the agent's and its "
        "environment's [0]",
    )
    p.add_argument("--n-envs", type=int, default=16, help="environments stepped together [16]")
    p.add_argument("--max-episode-steps", type=int, help="time limit [the env's own]")
    p.set_defaults(func=cmd_dt_collect)

    from unicomp.config import DTConfig

    _add_train_command(
        dt,
        "train",
        "train a DT on a data set, then act in the environment; writes a run folder",
        DTConfig,
        cmd_dt_train,
        defaults="unicomp.experiments.dt:dt_task_defaults",
    )

    p = dt.add_parser(
        "eval",
        help="act with a run folder's best weights in its environment; write DIR/eval.json",
    )
    p.add_argument("--run", required=True, help="a dt train run folder")
    # the names of dt train's evaluation settings (DTConfig's eval_* fields)
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per target [10]")
    p.add_argument(
        "--eval-seed", type=int, help="episode i resets with seed + i [the run's eval_seed]"
    )
    p.add_argument("--eval-targets", help="target returns, comma-separated [the run's]; BC: none")
    p.add_argument("--eval-envs", type=int, default=16, help="environments stepped together [16]")
    p.add_argument("--eval-max-steps", type=int, help="time limit [the env's own]")
    p.add_argument("--eval-window", choices=("exact", "rolling"), help="context past K [the run's]")
    p.add_argument("--threads", type=int, help="torch threads [torch's default]")
    p.add_argument(
        "--device", default="auto", help="where the model acts: auto | cpu | cuda | cuda:N [auto]"
    )
    p.add_argument("--out", help="where to write the result [RUN/eval.json]")
    p.set_defaults(func=cmd_dt_eval)

    p = dt.add_parser(
        "external",
        help="CQL or IQL trained by d3rlpy (in its own venv) on a data set, acted with by our "
        "evaluator; writes a run folder that dt compare reads",
    )
    p.add_argument(
        "--algo",
        choices=RegisteredNames("OFFLINE_RL_METHODS", external=True),
        required=True,
        help="d3rlpy's algorithm",
    )
    p.add_argument(
        "--data",
        required=True,
        action=given_once(SEVERAL_DATA),
        help="Minari folder or id, or D4RL .hdf5; several, comma-separated, trained on together",
    )
    p.add_argument("--env", help="gymnasium id to act in [the data set's]")
    p.add_argument("--out", help="run folder (must not hold a metrics.json) [runs/ALGO-DATA-sS]")
    p.add_argument("--steps", type=int, default=100_000, help="gradient steps [100000]")
    p.add_argument("--seed", type=int, default=0, help="d3rlpy's seed [0]")
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes [10]")
    p.add_argument(
        "--eval-seed", type=int, default=10_000, help="episode i resets with seed + i [10000]"
    )
    p.add_argument("--eval-envs", type=int, default=16, help="environments stepped together [16]")
    p.add_argument("--eval-max-steps", type=int, default=0, help="time limit [0: the env's own]")
    p.add_argument(
        "--d3rlpy-python",
        help="python of the virtual environment with d3rlpy [.venv-d3rlpy/bin/python of the "
        "checkout]",
    )
    p.add_argument("--device", default="cpu:0", help="d3rlpy's training device [cpu:0]")
    p.add_argument(
        "--delayed-reward",
        action="store_true",
        help="train on the data with each episode's rewards given at its last step (paper "
        "sec. 5.5, as dt train --delayed-reward)",
    )
    p.set_defaults(func=cmd_dt_external)

    p = dt.add_parser(
        "compare",
        help="one table of DT/BC runs: mean ± std over seeds; printed, written as .md and .csv",
    )
    p.add_argument("--runs", nargs="+", required=True, help="run folders (eval.json preferred)")
    p.add_argument("--out", default="dt-compare", help="file stem for .md and .csv [dt-compare]")
    p.set_defaults(func=cmd_dt_compare)


def cmd_ts_baseline(args: argparse.Namespace) -> None:
    from unicomp.config import parse_task_args
    from unicomp.experiments.timeseries import run_baseline

    task_args = parse_task_args(args.task_arg or [])
    metrics = run_baseline(
        args.task,
        task_args,
        args.method,
        args.out,
        seed=args.seed,
        season=args.season,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    _print_run("ts-baseline", metrics, metrics["out"])


def cmd_ts_list(args: argparse.Namespace) -> None:
    from unicomp.data import timeseries as ts
    from unicomp.errors import DataError

    try:
        names = ts.bundled_classification()
        series = ts.bundled_forecasting()
    except DataError as err:
        raise UnicompError(str(err)) from None
    print(
        f"classification problems aeon {ts.aeon_version()} ships (--task ucr --task-arg name=NAME):"
    )
    for name in names:
        print(f"  {name}")
    print("forecasting series it ships (--task forecast --task-arg name=NAME):")
    for name, s in ts.BUNDLED_SERIES.items():
        if name in series:
            print(
                f"  {name:<14} {s.description}; lookback {s.lookback}, horizon {s.horizon}, "
                f"patch {s.patch}, stride {s.stride}, season {s.season}"
            )
    print(
        "your own: --task ucr --task-arg path=FOLDER (<name>_TRAIN.ts and _TEST.ts), or "
        "--task forecast --task-arg path=FILE.csv (a date column, then channels)"
    )


def cmd_ts_report(args: argparse.Namespace) -> None:
    from unicomp.reports import tsreport
    from unicomp.reports.documents import update_documents

    for part in ("classification", "forecasting", "verdicts"):
        print(f"## {part}\n\n{tsreport.render(args.runs, part)}")
    if args.update_docs:
        for doc in update_documents(Path.cwd()):
            print(f"regenerated: {doc.relative_to(Path.cwd())}")


def _add_ts_commands(sub) -> None:
    ts = sub.add_parser("ts", help="time series: baselines and bundled data sets").add_subparsers(
        dest="sub", required=True
    )
    p = ts.add_parser(
        "baseline",
        help="the field's baselines on a ucr or forecast task (MiniRocket, ROCKET, 1-NN DTW; "
        "naive, seasonal-naive, DLinear); writes a run folder",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--task", required=True, choices=("ucr", "forecast"), help="the task")
    p.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="as fpt train's")
    p.add_argument(
        "--method",
        required=True,
        choices=("minirocket", "rocket", "1nn-dtw", "naive", "seasonal-naive", "dlinear"),
        help="ucr: minirocket, rocket, 1nn-dtw; forecast: naive, seasonal-naive, dlinear",
    )
    p.add_argument("--seed", type=int, default=0, help="the method's seed [0]")
    p.add_argument("--season", type=int, help="seasonal-naive: season in steps [the series']")
    p.add_argument("--steps", type=int, help="dlinear: optimizer steps [the task's default]")
    p.add_argument("--lr", type=float, help="dlinear: learning rate [the task's default]")
    p.add_argument("--batch-size", type=int, help="dlinear: batch size [the task's default]")
    p.add_argument("--device", default="auto", help="dlinear: auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--out", help="run folder [runs/ts-baselines/<data>-<method>-s<seed>]")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_ts_baseline)
    p = ts.add_parser("list", help="the classification sets and forecasting series aeon ships")
    p.set_defaults(func=cmd_ts_list)
    p = ts.add_parser(
        "report",
        help="tables and verdicts of a folder of time-series runs (FPT and baselines): mean ± std"
        " over seeds, one verdict per comparison",
    )
    p.add_argument("runs", help="the folder holding the run folders (scripts/ts_campaign.sh's)")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="also rewrite every generated block of README.md and docs/ from its records",
    )
    p.set_defaults(func=cmd_ts_report)


def cmd_demo(args: argparse.Namespace) -> None:
    from unicomp.tools.demo import run_demo

    run_demo(out=Path(args.out) if args.out else None, backbone=args.backbone, quick=args.quick)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from unicomp.reports.reproduce import reproduce

    out = Path(args.out) if args.out else None
    result = reproduce(
        args.preset, out, args.claims, args.jobs, dry_run=args.dry_run,
        report_only=args.report_only, d3rlpy_python=args.d3rlpy_python,
    )  # fmt: skip
    if args.dry_run:
        print(result["dry_run"])
        return
    for row in result["claims"]:
        print(f"{row['claim']:22} {row['verdict']:20} {row['ours']}")
    shown = out or Path("runs") / f"reproduce-{args.preset}"
    print(f"report: {shown}/report.md and report.html")
    if args.report_only:
        from unicomp.reports.documents import update_documents

        for doc in update_documents(Path.cwd()):
            print(f"regenerated: {doc.relative_to(Path.cwd())}")


def cmd_plot(args: argparse.Namespace) -> None:
    from unicomp.plots import plot_runs

    for path in plot_runs(args.runs, args.output):
        print(f"written: {path}")


def cmd_report(args: argparse.Namespace) -> None:
    from unicomp.runs import load_runs, runs_table, seeds_table

    runs = load_runs(args.runs)
    print(seeds_table(runs) if args.by_seed else runs_table(runs))


def cmd_export(args: argparse.Namespace) -> None:
    from unicomp.tools.export import export_dt_run

    print(json.dumps(export_dt_run(args.run, args.out), indent=2))


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--step 5`` is not ``--steps``); sub-parsers inherit the class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(``fpt train``, its help) for every command under ``parser``, nested ones spelt out."""
    rows: list[tuple[str, str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                nested = _commands(action.choices[choice.dest])
                rows += [(f"{choice.dest} {n}", h) for n, h in nested] or [
                    (choice.dest, choice.help)
                ]
    return rows


def _commands_epilog(parser: argparse.ArgumentParser) -> str:
    import shutil
    import textwrap

    rows = _commands(parser)
    width = max(len(name) for name, _ in rows) + 4
    text_width = max(30, min(100, shutil.get_terminal_size().columns) - width)
    lines = ["commands:"]
    for name, help in rows:
        wrapped = textwrap.wrap(help, text_width) or [""]
        lines.append(f"  {name:<{width - 2}}{wrapped[0]}")
        lines += [" " * width + more for more in wrapped[1:]]
    lines += [
        "",
        "'unicomp COMMAND --help' shows a command's options and their defaults;",
        "'unicomp list --task NAME' a task's training defaults and --task-arg keys.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unicomp",
        description=unicomp.__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"unicomp {unicomp.__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS
    )
    parser.usage = "unicomp [-h] [--version] COMMAND ..."  # after: sub-parsers' prog

    p = sub.add_parser(
        "list",
        help="registered tasks, backbones, freeze policies, Perceiver checkpoints, DT suites",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--task",
        metavar="NAME",
        help="one task's resolved training defaults and --task-arg keys (dt: the DT defaults)",
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="a markdown table of finished run folders")
    p.add_argument("runs", nargs="+", help="run folders (holding metrics.json)")
    p.add_argument("--by-seed", action="store_true", help="mean ± std over seeds per setting")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "plot",
        help="PNGs of run folders: learning curves overlaid; DT runs: return against target",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (holding curve.csv)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE.png",
        help="the learning curves [RUN/curves.png for one run, else ./curves.png]; DT "
        "return against target goes next to it as FILE-returns.png",
    )
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "reproduce",
        help="check every claim of the three papers; a Markdown and an HTML report",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--preset",
        required=True,
        choices=("tiny", "quick", "paper", "minatar"),
        help="tiny: seconds (tests; decides nothing); quick: 2 CPU cores (its time: "
        "results/reproduce-quick/run.json); paper: a GPU; minatar: the DT's Atari claims on "
        "MinAtar Breakout and Seaquest (hours on 2 CPU cores)",
    )
    p.add_argument(
        "--claims",
        help="comma-separated claim names (default: all; docs/reproduce.md lists them, and "
        "so does the error for an unknown one)",
    )
    p.add_argument("--out", help="folder for the runs and the report [runs/reproduce-<preset>]")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at a time")
    p.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    p.add_argument(
        "--d3rlpy-python",
        help="python of a d3rlpy venv (see `dt external`): the minatar preset then also trains "
        "d3rlpy's DiscreteCQL per game and seed; without it CQL is not run, and the claims say so",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: the report from the run records in --out, then every generated "
        "table in README.md and docs/ (under the working folder) from its records",
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "export",
        help="a dt train run as a transformers DecisionTransformerModel folder (from_pretrained)",
    )
    p.add_argument("run", help="a finished dt train run folder")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="new or empty folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="FPT on the bit tasks: pretrained vs random init, as a table")
    p.add_argument(
        "--out", help="folder for the demo's run folders [runs/demo; --quick: runs/demo-quick]"
    )
    p.add_argument("--backbone", default="minilm-l6", help="pretrained backbone to compare")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.set_defaults(func=cmd_demo)

    fpt = sub.add_parser("fpt", help="Frozen Pretrained Transformer").add_subparsers(
        dest="sub", required=True
    )
    _add_train_command(
        fpt, "train", "train an FPT on a task; writes a run folder", FPTConfig, cmd_fpt_train
    )

    p = fpt.add_parser(
        "ablate",
        help="run a suite of FPT comparisons (configs/suites/) and write its tables and plots",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--suite", required=True, help="suite name in configs/suites/ or a YAML file")
    p.add_argument(
        "--out", default="runs/ablate", help="root folder; the suite writes <out>/<name>"
    )
    p.add_argument("--jobs", type=int, default=2, help="cells trained at the same time")
    p.add_argument("--threads", type=int, help="threads per cell (default: CPU cores / jobs)")
    p.add_argument("--seeds", help="override the suite's seeds, e.g. 0,1,2")
    p.add_argument("--protocol", choices=("paper", "sweep"), help="override the suite's protocol")
    p.add_argument("--steps", type=int, help="override every cell's step budget")
    p.add_argument("--dry-run", action="store_true", help="list the cells, run nothing")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write results.md/json and plots from the cells finished so far; train nothing",
    )
    p.set_defaults(func=cmd_fpt_ablate)

    p = fpt.add_parser(
        "attention",
        help="draw a finished run's attention maps for one example (PNG + raw .npz)",
        description=_ATTENTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="a finished fpt train run folder")
    p.add_argument("--example", type=int, default=0, metavar="N", help="index in the split [0]")
    p.add_argument("--split", choices=("test", "val"), default="test", help="[test]")
    p.add_argument("--out", metavar="FILE.png", help="the picture [RUN/attention-<split>-<N>.png]")
    p.set_defaults(func=cmd_fpt_attention)

    p = fpt.add_parser(
        "export-adapter",
        help="a finished run's task parameters alone, as one safetensors file (unicomp serve)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", help="a finished fpt train run folder")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the adapter file")
    p.set_defaults(func=cmd_fpt_export_adapter)

    perceiver = sub.add_parser("perceiver", help="Perceiver IO and Perceiver").add_subparsers(
        dest="sub", required=True
    )
    _add_train_command(
        perceiver,
        "train",
        "train a Perceiver (IO) on a task; writes a run folder",
        PerceiverConfig,
        cmd_perceiver_train,
        defaults="unicomp.experiments.perceiver:perceiver_task_defaults",
    )
    p = perceiver.add_parser(
        "search-latents",
        help="train one run per latent size; pick the smallest within a tolerance of the best",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--latents", default="8,16,32,64", help="candidate sizes, comma-separated")
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed drop in validation score")
    p.add_argument("--config", help="YAML config for every candidate run")
    add_dataclass_args(
        p, PerceiverConfig, _defaults("unicomp.experiments.perceiver:perceiver_task_defaults")
    )
    p.set_defaults(func=cmd_perceiver_search, resume=False)
    _add_dt_commands(sub)
    _add_ts_commands(sub)
    _add_serve_command(sub)
    parser.epilog = _commands_epilog(parser)
    return parser


# System errors about a path the user named or the machine it is on (a name too long, no
# permission, a read-only or full file system, a file where a folder belongs): one line, like
# UnicompError, wherever they surface. Others (a file missing that unicomp itself wrote, an
# I/O error) keep their traceback: they may be bugs.
_USER_OS_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ENAMETOOLONG", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENOTDIR", "EISDIR",
        "EFBIG", "ELOOP",
    )
    if hasattr(errno, name)
)  # fmt: skip


def _os_error_line(err: OSError) -> str | None:
    """``unicomp: error: PATH: reason`` for an OSError in _USER_OS_ERRORS that names a path."""
    if err.errno not in _USER_OS_ERRORS or err.filename is None:
        return None
    path = os.fsdecode(err.filename)
    shown = path if len(path) <= 120 else f"{path[:60]}...{path[-40:]} ({len(path)} characters)"
    return f"unicomp: error: {shown}: {err.strerror}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UnicompError as err:  # said in the command's flags where it differs from Python
        print(f"unicomp: error: {getattr(err, 'cli', err)}", file=sys.stderr)
        return 2
    except OSError as err:
        line = _os_error_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; resume with --resume --out <run folder>" if hasattr(args, "resume") else ""
        print(f"unicomp: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
