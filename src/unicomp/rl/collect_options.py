"""``unicomp dt collect``'s options and their rules: which combinations of a suite, an agent
or policy, a DQN Replay folder and ``--from-training`` go together, what each leaves at its
default, and which function each combination runs (a rollout, unicomp.rl.collect; a DQN
Replay import; a training run that keeps its experience, unicomp.rl.sac_replay and
unicomp.rl.dqn_training). The command line parses its flags into ``CollectOptions`` and
calls ``run_collect``; the messages name the flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unicomp.errors import UnicompError

# the settings of --from-training's training (train_until_medium's arguments)
TRAINING_SETTINGS = (
    "medium_return",
    "max_train_steps",
    "eval_every",
    "eval_episodes",
    "learning_starts",
)


@dataclass
class CollectOptions:
    """One ``dt collect``: the environment, the folder to write, and what to collect (one of
    ``suite``, ``agent``, ``policy``, ``dqn_replay``), with the settings that go with it; None
    where not given. ``from_training`` is True (train here) or a medium-replay run's folder."""

    env: str
    out: str
    suite: str | None = None
    agent: str | None = None
    policy: str | None = None
    dqn_replay: str | None = None
    noise: float = 0.0
    episodes: int | None = None
    transitions: int | None = None
    buffers: str | None = None
    from_training: bool | str | None = None
    steps: int | None = None
    medium_return: float | None = None
    max_train_steps: int | None = None
    eval_every: int | None = None
    eval_episodes: int | None = None
    learning_starts: int | None = None
    agents: str | None = None
    seed: int = 0
    n_envs: int = 16
    max_episode_steps: int | None = None


def run_collect(options: CollectOptions) -> dict[str, Any]:
    """Check that ``options`` go together (a one-line UnicompError naming the flags where
    not), run the collection they ask for and return its record (collection.json's fields)."""
    from unicomp.rl.collect import default_agents_dir

    o = options
    agents = Path(o.agents) if o.agents else default_agents_dir()
    if o.steps is not None and not (o.from_training is True and o.suite == "dqn-replay"):
        raise UnicompError("--steps goes with --suite dqn-replay --from-training")
    if o.from_training is True and o.suite == "dqn-replay":
        return _train_dqn_stream(o)
    if o.from_training is True:
        return _train_sac_replay(o)
    if any(getattr(o, name) is not None for name in TRAINING_SETTINGS):
        raise UnicompError(
            "--medium-return, --max-train-steps, --eval-every, --eval-episodes and "
            "--learning-starts go with --suite medium-replay --from-training (the last three "
            "also with --suite dqn-replay --from-training)"
        )
    if o.suite == "dqn-replay":
        raise UnicompError(
            "--suite dqn-replay goes with --from-training (a DQN trained here) or use "
            "--dqn-replay DIR to read the DQN Replay Dataset"
        )
    if o.dqn_replay:
        return _import_dqn_replay(o)
    if o.transitions or o.buffers:
        raise UnicompError("--transitions and --buffers go with --dqn-replay")
    if o.episodes is None:
        raise UnicompError("--episodes is required (except with --dqn-replay)")
    return _collect(o, agents)


def _import_dqn_replay(o: CollectOptions) -> dict[str, Any]:
    from unicomp.rl.atari import parse_ranges
    from unicomp.rl.collect import import_dqn_replay

    if o.episodes is not None or o.noise:
        raise UnicompError("--dqn-replay reads episodes as logged: no --episodes or --noise")
    suffixes = parse_ranges(o.buffers) if o.buffers else None
    return import_dqn_replay(o.dqn_replay, o.env, o.out, o.transitions, suffixes)


def _chosen(o: CollectOptions, names: tuple[str, ...]) -> dict[str, Any]:
    """The training settings among ``names`` that were given (the others keep the trainer's
    defaults)."""
    return {name: getattr(o, name) for name in names if getattr(o, name) is not None}


def _train_dqn_stream(o: CollectOptions) -> dict[str, Any]:
    from unicomp.rl.dqn_training import PAPER_TRANSITIONS, train_dqn_stream

    if o.episodes is not None or o.noise:
        raise UnicompError("--from-training keeps the DQN's whole stream: no --episodes or --noise")
    if o.medium_return is not None or o.max_train_steps is not None:
        raise UnicompError(
            "--medium-return and --max-train-steps go with --suite medium-replay; "
            "the DQN trains for --steps"
        )
    return train_dqn_stream(
        o.env,
        o.out,
        steps=o.steps if o.steps is not None else PAPER_TRANSITIONS,
        seed=o.seed,
        n_envs=o.n_envs,
        max_episode_steps=o.max_episode_steps,
        **_chosen(o, ("eval_every", "eval_episodes", "learning_starts")),
    )


def _train_sac_replay(o: CollectOptions) -> dict[str, Any]:
    from unicomp.rl.sac_replay import train_until_medium

    if o.suite != "medium-replay":
        raise UnicompError(
            "--from-training without a folder trains SAC for --suite medium-replay; "
            "--suite medium or medium-expert take that run's folder: --from-training DIR"
        )
    if o.episodes is not None or o.noise:
        raise UnicompError(
            "--from-training keeps the whole replay buffer: no --episodes or --noise"
        )
    return train_until_medium(
        o.env,
        o.out,
        seed=o.seed,
        n_envs=o.n_envs,
        max_episode_steps=o.max_episode_steps,
        **_chosen(o, TRAINING_SETTINGS),
    )


def _trained_components(o: CollectOptions) -> tuple:
    """--suite medium / medium-expert --from-training DIR: the final SAC agent of a
    medium-replay --from-training run, alone or with the expert (TQC)."""
    from unicomp.rl.collect import Component
    from unicomp.rl.sac_replay import AGENT_FILE

    if o.suite not in ("medium", "medium-expert"):
        raise UnicompError(
            f"--from-training DIR goes with --suite medium or medium-expert, not {o.suite}"
        )
    agent = Path(o.from_training) / AGENT_FILE
    if not agent.is_file():
        raise UnicompError(
            f"no {AGENT_FILE} in {o.from_training}: expected the folder of a "
            "`dt collect --suite medium-replay --from-training` run"
        )
    medium = Component(str(agent))
    return (medium,) if o.suite == "medium" else (medium, Component("tqc"))


def _collect(o: CollectOptions, agents: Path | None) -> dict[str, Any]:
    from unicomp.rl.collect import Component, collect, suite_components

    if o.suite:
        if o.noise:
            raise UnicompError("--noise goes with --agent or --policy; a suite sets its own")
        if o.from_training:
            components = _trained_components(o)
        else:
            components = suite_components(o.env, o.suite)
    elif o.from_training:
        raise UnicompError("--from-training goes with --suite")
    else:
        components = (Component(o.agent or o.policy, noise=o.noise),)
    return collect(
        o.env,
        components,
        o.episodes,
        o.out,
        seed=o.seed,
        n_envs=o.n_envs,
        agents_dir=agents,
        max_episode_steps=o.max_episode_steps,
        suite=o.suite,
    )
