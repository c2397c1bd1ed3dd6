"""Collect trajectory data sets by rolling out policies in gymnasium environments.

Policies: trained Stable-Baselines3 agents (rl-baselines3-zoo / rl-trained-agents layout:
``<algo>/<Env>_1/<Env>.zip`` with ``<Env>/vecnormalize.pkl`` where the agent normalised its
observations), a uniform random policy, and either of them with Gaussian action noise.

Suites in the manner of D4RL (Fu et al. 2020) for Hopper-v5 and HalfCheetah-v5:

    random         a uniform random policy
    medium         a policy at roughly 1/3 to 1/2 of the expert's return
    medium-replay  a mixture over noise levels and weaker policies (D4RL's medium-replay is the
                   replay buffer of an agent trained up to medium; this mixes policies of
                   rising quality instead: a departure; unicomp.rl.sac_replay keeps such a
                   buffer, ``dt collect --suite medium-replay --from-training``)
    expert         the best agent (TQC)
    medium-expert  medium and expert episodes, half each (D4RL concatenates its two full
                   data sets)

Which agent and noise make each suite was chosen from measured returns in the -v5
environments (docs/rl-agents.md). The agents were trained on the -v3 environments
(mujoco-py); -v5 has the same observation and action sizes but newer MuJoCo dynamics.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from unicomp.data.pickles import load_data_pickle
from unicomp.errors import DataError, UnicompError
from unicomp.files import check_free_space, temporary_folder, write_in_child
from unicomp.provenance import machine
from unicomp.rl.atari import atari_env_id
from unicomp.rl.envs import check_env_id, make_env
from unicomp.rl.evaluate import reference_scores, run_episodes
from unicomp.rl.minari_io import content_tag, default_dataset_id, write_minari
from unicomp.rl.trajectories import TrajectoryDataset

SB3_ALGOS = ("tqc", "sac", "td3", "ppo", "a2c", "dqn")


# --- policies -------------------------------------------------------------------------------
class Policy:
    """A memoryless agent (see unicomp.rl.evaluate.Agent): ``act`` alone decides."""

    name = "policy"

    def reset(self, n: int) -> None:
        pass

    def observe(self, rewards: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RandomPolicy(Policy):
    """Uniform over a Box (bounds) or a Discrete space; its own seeded generator."""

    name = "random"

    def __init__(self, action_space, seed: int = 0):
        self.space, self.rng = action_space, np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        n = len(obs)
        if hasattr(self.space, "n"):
            return self.rng.integers(0, self.space.n, size=n)
        low, high = self.space.low, self.space.high
        return self.rng.uniform(low, high, size=(n, *self.space.shape)).astype(self.space.dtype)


class NoisyPolicy(Policy):
    """``base`` plus Gaussian noise N(0, sigma^2) on every action dimension, clipped to the
    action bounds (continuous); with probability ``sigma`` a uniform random action (discrete)."""

    def __init__(self, base: Policy, sigma: float, action_space, seed: int = 0):
        self.base, self.sigma, self.space = base, sigma, action_space
        self.rng = np.random.default_rng(seed)
        self.name = f"{base.name}+noise{sigma:g}"

    def reset(self, n: int) -> None:
        self.base.reset(n)

    def act(self, obs: np.ndarray) -> np.ndarray:
        a = self.base.act(obs)
        if hasattr(self.space, "n"):
            swap = self.rng.random(len(a)) < self.sigma
            return np.where(swap, self.rng.integers(0, self.space.n, size=len(a)), a)
        noisy = a + self.rng.normal(0.0, self.sigma, size=a.shape)
        return np.clip(noisy, self.space.low, self.space.high).astype(self.space.dtype)


class SB3Policy(Policy):
    """A trained Stable-Baselines3 agent, deterministic (the mean action), with the
    observation normalisation it was trained with (VecNormalize statistics) applied here."""

    def __init__(self, model, obs_norm: dict[str, Any] | None, name: str):
        self.model, self.obs_norm, self.name = model, obs_norm, name

    def act(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float64)
        if self.obs_norm is not None:
            n = self.obs_norm
            # What VecNormalize.normalize_obs does with its running statistics.
            x = np.clip((x - n["mean"]) / np.sqrt(n["var"] + n["epsilon"]), -n["clip"], n["clip"])
        actions, _ = self.model.predict(x.astype(np.float32), deterministic=True)
        return actions


def _find_agent_files(path: Path) -> tuple[Path, Path | None]:
    """The model zip and its vecnormalize.pkl (if any) from a zip or a zoo agent folder."""
    if path.is_file():
        zip_path = path
    elif path.is_dir():
        zips = sorted(path.glob("*.zip"))
        if len(zips) != 1:
            raise DataError(f"agent folder {path}: expected one model .zip, found {len(zips)}")
        zip_path = zips[0]
    else:
        raise DataError(f"agent {path} does not exist")
    # The zoo keeps it in a folder named like the zip (<Env>/vecnormalize.pkl), or beside it.
    for candidate in (
        zip_path.with_suffix("") / "vecnormalize.pkl",
        zip_path.parent / "vecnormalize.pkl",
    ):
        if candidate.is_file():
            return zip_path, candidate
    return zip_path, None


# The classes a VecNormalize pickle needs beyond plain data. The zoo's pickles name the old ``gym``
# package (gym.spaces.Box): read as gymnasium. Anything else is refused, so a tampered file cannot
# run code; numpy arrays are checked as in every data pickle (plain numeric arrays only).
_VECNORMALIZE_CLASSES = (
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("gymnasium.spaces.box", "Box"),
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
    ("collections", "OrderedDict"),
)


def _load_vecnormalize(f: IO[bytes]) -> Any:
    """Unpickle a VecNormalize file through the allow-list unpickler (unicomp.data.pickles)."""
    return load_data_pickle(f, classes=_VECNORMALIZE_CLASSES, renamed_modules={"gym": "gymnasium"})


def read_vecnormalize(path: Path) -> dict[str, Any] | None:
    """Observation statistics from a VecNormalize pickle: mean, var, epsilon, clip.

    These pickles come from rl-baselines3-zoo's trained agents (github.com/DLR-RM/
    rl-trained-agents), the source the user named for /work/shared/data/sb3-agents; we still
    load them through an allow-list unpickler rather than trusting pickle."""
    try:
        with path.open("rb") as f:
            vn = _load_vecnormalize(f)
        if not getattr(vn, "norm_obs", False):
            return None
        rms = vn.obs_rms
        return {
            "mean": np.asarray(rms.mean, dtype=np.float64),
            "var": np.asarray(rms.var, dtype=np.float64),
            "epsilon": float(vn.epsilon),
            "clip": float(vn.clip_obs),
        }
    except (
        pickle.UnpicklingError,
        OSError,
        EOFError,
        AttributeError,
        TypeError,
        ValueError,
    ) as err:
        raise DataError(f"{path}: not a VecNormalize pickle we can read ({err})") from None


def _algo_of(data: dict[str, Any]) -> str:
    """The algorithm of a saved SB3 model, from its policy class (PPO and A2C share theirs:
    PPO saves a clip range, A2C does not)."""
    module = str(data.get("policy_class", {}).get("__module__", ""))
    for algo in ("tqc", "sac", "td3", "dqn"):
        if f".{algo}." in module:
            return algo
    if module.endswith("common.policies"):
        return "ppo" if "clip_range" in data else "a2c"
    raise DataError(f"cannot tell the algorithm of this SB3 model (policy from {module!r})")


def load_sb3_agent(path: str | os.PathLike, env_id: str) -> SB3Policy:
    """Load a trained SB3 agent (TQC, SAC, TD3, PPO, A2C, DQN) to act in ``env_id``.

    The zoo's zips were saved with gym 0.19 and SB3 1.3: their pickled spaces name the old
    ``gym`` package and their schedules are closures of an older Python. Neither is needed to
    act, so we hand SB3 the environment's own spaces and constant schedules instead.
    """
    import sb3_contrib
    import stable_baselines3 as sb3

    zip_path, norm_path = _find_agent_files(Path(path))
    try:
        data = json.loads(zipfile.ZipFile(zip_path).read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
        raise DataError(f"{zip_path}: not a Stable-Baselines3 model zip ({err})") from None
    algo = _algo_of(data)
    cls = {
        "tqc": sb3_contrib.TQC,
        "sac": sb3.SAC,
        "td3": sb3.TD3,
        "ppo": sb3.PPO,
        "a2c": sb3.A2C,
        "dqn": sb3.DQN,
    }[algo]
    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    custom = {
        "observation_space": obs_space,
        "action_space": act_space,
        "lr_schedule": lambda _: 0.0,
        "learning_rate": 0.0,
        "clip_range": lambda _: 0.0,
        "exploration_schedule": lambda _: 0.0,
        "buffer_size": 1,  # off-policy agents would otherwise allocate a 1M-step buffer
        "replay_buffer_class": None,
        "replay_buffer_kwargs": {},
    }
    try:
        model = cls.load(zip_path, device="cpu", custom_objects=custom)
    except Exception as err:  # SB3 raises many kinds on a mismatched model
        raise DataError(f"{zip_path}: could not load as {algo.upper()}: {err}") from None
    expected = data.get("observation_space", {}).get("shape")
    if isinstance(expected, str):  # older SB3 wrote the shape as a string "[11]"
        expected = json.loads(expected)
    if expected is not None and list(obs_space.shape) != list(expected):
        raise DataError(
            f"{zip_path}: the agent observes shape {expected}, "
            f"{env_id} gives {list(obs_space.shape)}"
        )
    obs_norm = read_vecnormalize(norm_path) if norm_path is not None else None
    return SB3Policy(model, obs_norm, name=f"{algo}:{zip_path.stem}")


# --- suites ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Component:
    """One source of episodes in a suite: a policy ("random" or an SB3 algorithm whose agent
    is found under the agents folder), Gaussian action noise, and a share of the episodes."""

    policy: str
    noise: float = 0.0
    share: float = 1.0


# Chosen from the returns measured in -v5 (docs/rl-agents.md; D4RL-normalised in brackets):
# Hopper: TQC 2944 (91), SAC+0.1 1456 (45; D4RL's hopper-medium: 44), A2C 736 (23),
# random 13 (1). HalfCheetah: TQC 12091 (100), SAC+0.3 5453 (46; D4RL's: 41), PPO 5894 (50),
# A2C 3044 (27). The medium-replay mixtures average about 23 on both.
_MEDIUM = {"Hopper": Component("sac", 0.1), "HalfCheetah": Component("sac", 0.3)}
_REPLAY = {
    "Hopper": (
        Component("random"),
        Component("a2c", 0.5),
        Component("a2c", 0.1),
        Component("sac", 0.5),
        Component("sac", 0.3),
        Component("sac", 0.1),
    ),
    "HalfCheetah": (
        Component("random"),
        Component("a2c", 0.3),
        Component("a2c"),
        Component("ppo", 0.3),
        Component("sac", 0.5),
        Component("sac", 0.3),
    ),
}
SUITES: dict[str, dict[str, tuple[Component, ...]]] = {
    env: {
        "random": (Component("random"),),
        "medium": (_MEDIUM[env],),
        "medium-replay": _REPLAY[env],
        "expert": (Component("tqc"),),
        "medium-expert": (_MEDIUM[env], Component("tqc")),
    }
    for env in ("Hopper", "HalfCheetah")
}


def env_name(env_id: str) -> str:
    """ "Hopper-v5" -> "Hopper"."""
    return env_id.rsplit("-v", 1)[0]


def suite_components(env_id: str, suite: str) -> tuple[Component, ...]:
    suites = SUITES.get(env_name(env_id))
    if suites is None:
        check_env_id(env_id)  # a misspelt id: named as such, with close matches
        raise UnicompError(
            f"no suites for {env_id}; suites exist for {', '.join(f'{e}-v5' for e in SUITES)}. "
            f"Use --agent PATH or --policy random instead"
        )
    if suite not in suites:
        raise UnicompError(f"unknown suite {suite!r}; choices: {', '.join(suites)}")
    return suites[suite]


def split_episodes(total: int, shares: list[float]) -> list[int]:
    """``total`` episodes over components by share (largest remainders get the rest)."""
    raw = [total * s / sum(shares) for s in shares]
    counts = [math.floor(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def default_agents_dir() -> Path | None:
    """$UNICOMP_DATA/sb3-agents, where the user's data root holds the zoo's agents."""
    root = os.environ.get("UNICOMP_DATA")
    if root and (Path(root).expanduser() / "sb3-agents").is_dir():
        return Path(root).expanduser() / "sb3-agents"
    return None


def find_zoo_agent(agents_dir: Path, algo: str, env_id: str) -> Path:
    """``<agents_dir>/<algo>/<Env>-v*_1``: the zoo's folder for this environment, any version
    (the zoo trained on -v3; we act in whichever version ``env_id`` names)."""
    matches = sorted((agents_dir / algo).glob(f"{env_name(env_id)}-v*_*"))
    if not matches:
        raise DataError(
            f"no {algo.upper()} agent for {env_name(env_id)} under {agents_dir / algo} "
            f"(expected a folder like {env_name(env_id)}-v3_1 with the model zip)"
        )
    return matches[-1]


def make_policy(
    policy: str,
    env_id: str,
    noise: float = 0.0,
    seed: int = 0,
    agents_dir: Path | None = None,
) -> tuple[Policy, str | None]:
    """A policy by name: "random", a path to an agent (zip or zoo folder), or an algorithm
    looked up under ``agents_dir``; with ``noise`` > 0, plus Gaussian action noise.
    Returns (policy, agent path)."""
    env = make_env(env_id)
    try:
        space = env.action_space
    finally:
        env.close()
    path: Path | None = None
    if policy == "random":
        base: Policy = RandomPolicy(space, seed=seed)
    else:
        if policy in SB3_ALGOS:
            if agents_dir is None:
                raise UnicompError(
                    f"policy {policy!r} needs the trained agents: pass --agents DIR (the "
                    f"rl-trained-agents layout <algo>/<Env>-v3_1/) or set UNICOMP_DATA to a folder "
                    f"holding sb3-agents/"
                )
            path = find_zoo_agent(agents_dir, policy, env_id)
        else:
            path = Path(policy)
        base = load_sb3_agent(path, env_id)
    if noise > 0:
        # A seed apart from the random policy's, so noise and random actions never coincide.
        return NoisyPolicy(base, noise, space, seed=seed + 7919), str(path) if path else None
    return base, str(path) if path else None


def collect(
    env_id: str,
    components: tuple[Component, ...] | list[Component],
    episodes: int,
    out: str | os.PathLike,
    seed: int = 0,
    n_envs: int = 16,
    agents_dir: Path | None = None,
    max_episode_steps: int | None = None,
    suite: str | None = None,
    log=print,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll out each component's policy for its share of ``episodes`` and write the episodes
    (in component order) as a Minari data set in ``out``, with ``out/collection.json``
    recording what produced them and the returns measured. Returns that record."""
    out = Path(out)
    if episodes < 1:
        raise UnicompError(f"--episodes must be at least 1, got {episodes}")
    env_id = atari_env_id(env_id) or env_id  # "breakout" -> "ALE/Breakout-v5"
    check_env_id(env_id)  # a misspelt id: one line, before check_out makes the folder
    check_out(out)
    counts = split_episodes(episodes, [c.share for c in components])
    t0 = time.perf_counter()
    all_episodes, parts, first = [], [], 0
    for k, (comp, count) in enumerate(zip(components, counts, strict=True)):
        if count == 0:
            continue
        policy, path = make_policy(comp.policy, env_id, comp.noise, seed + 1000 * k, agents_dir)
        # Episode i of the whole data set starts from reset(seed=seed + i).
        result = run_episodes(
            env_id,
            policy,
            count,
            seed=seed + first,
            n_envs=n_envs,
            max_episode_steps=max_episode_steps,
            record=True,
            progress=f"collect {policy.name}" if progress else None,
        )
        part = {
            "policy": policy.name,
            "agent": path,
            "noise": comp.noise,
            **result.summary(env_id),
            "episode_range": [first, first + count],  # indices in the data set
        }
        log(
            f"{policy.name}: {count} episodes, return {part['return_mean']:.1f} "
            f"+- {part['return_std']:.1f}"
        )
        parts.append(part)
        all_episodes.extend(result.episodes)
        first += count
    dataset = TrajectoryDataset(all_episodes, env_id=env_id, source=f"unicomp dt collect {suite}")
    settings = {"suite": suite, "seed": seed, "n_envs": n_envs}
    settings.update(max_episode_steps=max_episode_steps, components=parts)
    what = ", ".join(p["policy"] for p in parts)
    return write_collection(dataset, out, settings, suite or "custom", what, t0)


def write_collection(
    dataset: TrajectoryDataset,
    out: Path,
    settings: dict[str, Any],
    name: str,
    what: str,
    t0: float,
    files: dict[str, Callable[[Path], None]] | None = None,
    ref: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Write ``dataset`` as a Minari data set in ``out`` and ``out/collection.json``: the
    environment, the data set's Minari id (with the content tag that makes it its own),
    ``settings`` (what produced the episodes), the returns (with their
    quantiles) and, where the environment has reference scores, the mean normalised score.
    ``files``: further files of ``out`` by name, each written by its function given the
    path (see write_data_set). ``ref``: the (random, expert) returns that normalise its
    scores, stored in the data set (default: our table's for the environment, if any).
    Returns that record."""
    env_id = dataset.env_id
    summary = dataset.summary()
    ref = ref if ref is not None else reference_scores(env_id)
    quantiles = (0.1, 0.25, 0.5, 0.75, 0.9)
    values = np.quantile(dataset.returns(), quantiles)
    # one id per collection: two of one environment and suite differ in their tag
    dataset_id = default_dataset_id(env_id, name, content_tag(dataset))
    record: dict[str, Any] = {
        "env_id": env_id,
        "dataset_id": dataset_id,
        **settings,
        **summary,
        "return_quantiles": {f"{q:g}": float(v) for q, v in zip(quantiles, values, strict=True)},
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "versions": _versions(),
    }
    if ref is not None:
        lo, hi = ref
        record["normalized_score_mean"] = 100 * (summary["return_mean"] - lo) / (hi - lo)

    def write(folder: Path) -> None:
        write_minari(
            dataset,
            folder,
            dataset_id=dataset_id,
            description=f"{env_id} {name}: {what}",
            ref_scores=ref,  # stored as ref_min_score/ref_max_score: minari.get_normalized_score
        )

    write_data_set(dataset, out, write, record, files)
    return record


def check_out(out: Path) -> None:
    """Refuse, before any rollout, an ``out`` that holds a data set or cannot be written in."""
    if (out / "data").exists():
        raise UnicompError(f"{out} already holds a data set; choose another --out")
    try:
        with temporary_folder(out, "data"):
            pass
    except OSError as err:
        raise UnicompError(f"cannot write the data set in {out}: {err.strerror or err}") from None


def write_data_set(
    dataset: TrajectoryDataset,
    out: Path,
    write: Callable[[Path], None],
    record: dict[str, Any],
    files: dict[str, Callable[[Path], None]] | None = None,
) -> None:
    """``write(folder)`` (the Minari data set) into a temporary folder in ``out``, in a child
    process (h5py segfaults on a full disk: unicomp.files.write_in_child), then ``files``
    (name: its writer, given the path) and collection.json (``record``); all renamed into
    place at the end, collection.json last. Any failure is one UnicompError line and leaves
    ``out`` as it was (no data, no temporary)."""
    files = files or {}
    try:
        with temporary_folder(out, "data") as tmp:
            check_free_space(tmp, _bytes_at_least(dataset), f"the data set in {out}")
            write_in_child(lambda: write(tmp), f"the data set in {out}")
            for name, write_file in files.items():
                write_file(tmp / name)
            # a plain write: the temporary folder is what makes it atomic
            (tmp / "collection.json").write_text(json.dumps(record, indent=2) + "\n")
            for name in files:
                os.replace(tmp / name, out / name)
            os.replace(tmp / "data", out / "data")
            os.replace(tmp / "collection.json", out / "collection.json")
    except OSError as err:
        raise UnicompError(
            f"could not write the data set in {out}: {err.strerror or err}; nothing was written"
        ) from None


def _bytes_at_least(dataset: TrajectoryDataset) -> int:
    """A lower bound of what Minari writes: the arrays, less image observations (which it
    stores compressed)."""
    total = 0
    for e in dataset.episodes:
        obs = e.observations
        total += e.actions.nbytes + 8 * len(e.rewards) + 2 * len(e.terminations)
        total += 0 if obs.dtype == np.uint8 and obs.ndim in (3, 4) else obs.nbytes
    return total


def import_dqn_replay(
    replay: str | os.PathLike,
    env_id: str,
    out: str | os.PathLike,
    transitions: int | None = None,
    suffixes: list[int] | None = None,
    log=print,
) -> dict[str, Any]:
    """Episodes of a DQN Replay Dataset run (unicomp.rl.dqn_replay.read_dqn_replay; the paper's
    1%: ``transitions=500_000`` over the 50 checkpoints) written as ``collect`` writes."""
    from unicomp.rl.dqn_replay import read_dqn_replay

    out = Path(out)
    check_out(out)
    ale_id = atari_env_id(env_id)
    if ale_id is None:
        raise UnicompError(f"--dqn-replay needs an Atari game as --env (ALE/<Game>-v5): {env_id!r}")
    t0 = time.perf_counter()
    dataset = read_dqn_replay(replay, transitions, suffixes, env_id=ale_id, log=log)
    settings = {
        "suite": "dqn-replay",
        "dqn_replay": str(replay),
        "checkpoints": dataset.metadata["dqn_replay_checkpoints"],
        "transitions_requested": transitions,
        "rewards": "clipped to [-1, 1] by the logging agent",
    }
    return write_collection(dataset, out, settings, "dqn-replay", f"DQN replay {replay}", t0)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gymnasium", "mujoco", "ale-py", "stable-baselines3", "sb3-contrib", "minari"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
