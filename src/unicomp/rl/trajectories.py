"""One in-memory format for offline RL data, with readers for D4RL HDF5 and Minari and a
Minari writer.

A data set is a list of episodes plus where it came from (environment id, source). Each
episode holds the arrays of one run of the environment:

    observations  (T+1, *obs) with the observation after the last step, or (T, *obs) where
                  the source does not store it (D4RL files without ``next_observations``)
    actions       (T, act_dim) float for continuous control, (T,) int for discrete actions
    rewards       (T,) float
    terminations  (T,) bool: the environment ended the episode (e.g. the hopper fell)
    truncations   (T,) bool: the episode was cut (time limit, or the file ended mid-episode)

Every reader checks what it reads and raises DataError naming the file and the field: a
missing key, lengths that disagree, NaN or inf values, an empty data set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np

from unicomp.errors import DataError, UnicompError
from unicomp.rl.envs import env_spec_of, make_env, register_env_spec

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


@dataclass
class Episode:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def states(self) -> np.ndarray:
        """(T, *obs): the observation each action was taken in."""
        return self.observations[: len(self)]

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


@dataclass
class TrajectoryDataset:
    """Episodes plus where they came from. ``metadata`` is free-form (collection details)."""

    episodes: list[Episode]
    env_id: str | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def n_steps(self) -> int:
        return sum(len(e) for e in self.episodes)

    @property
    def discrete(self) -> bool:
        """Integer actions of shape (T,) are discrete; anything else is continuous."""
        a = self.episodes[0].actions
        return a.ndim == 1 and np.issubdtype(a.dtype, np.integer)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.episodes[0].observations.shape[1:])

    @property
    def action_dim(self) -> int:
        """Continuous: values per action. Discrete: number of actions (metadata, else max+1)."""
        if self.discrete:
            n = self.metadata.get("n_actions")
            return int(n) if n else int(max(int(e.actions.max()) for e in self.episodes)) + 1
        return int(self.episodes[0].actions.shape[1])

    def returns(self) -> np.ndarray:
        return np.array([e.total_return for e in self.episodes], dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        r = self.returns()
        lengths = np.array([len(e) for e in self.episodes])
        return {
            "episodes": len(self.episodes),
            "steps": int(lengths.sum()),
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "return_min": float(r.min()),
            "return_max": float(r.max()),
            "return_median": float(np.median(r)),
            "length_mean": float(lengths.mean()),
            "terminated": int(sum(bool(e.terminations[-1]) for e in self.episodes)),
        }

    def validate(self, where: str) -> None:
        if not self.episodes:
            raise DataError(f"{where}: the data set holds no episodes")
        for i, episode in enumerate(self.episodes):
            check_episode(episode, f"{where}: episode {i}")
        shapes = {(e.observations.shape[1:], e.actions.shape[1:]) for e in self.episodes}
        if len(shapes) > 1:
            raise DataError(f"{where}: episodes disagree on observation/action shapes {shapes}")
        obs_shape, act_shape = shapes.pop()
        if len(obs_shape) not in (1, 3) or 0 in obs_shape:
            raise DataError(
                f"{where}: observations have shape {obs_shape} per step; expected a vector "
                "(state_dim,) or an image (C, H, W), with no empty dimension"
            )
        if 0 in act_shape:
            raise DataError(f"{where}: actions have shape {act_shape} per step (no values)")
        if self.discrete:
            low = min(int(e.actions.min()) for e in self.episodes)
            high = max(int(e.actions.max()) for e in self.episodes)
            n = self.metadata.get("n_actions")
            limit = int(n) if n else MAX_DISCRETE_ACTIONS
            if low < 0 or high >= limit:
                what = f"the {n} actions of the action space" if n else "a discrete action"
                raise DataError(
                    f"{where}: discrete actions range {low}..{high}, expected 0..{limit - 1} "
                    f"({what})"
                )


MAX_DISCRETE_ACTIONS = 1 << 16  # without an action space: a bound on the embedding's size


def check_episode(ep: Episode, where: str) -> None:
    """Raise DataError if the episode's fields are empty, not numbers, of the wrong shape,
    disagree in length or hold NaN/inf."""
    for name in ("observations", "actions", "rewards", "terminations", "truncations"):
        values = getattr(ep, name)
        if values.dtype.kind not in "biuf":
            raise DataError(f"{where}: field '{name}' has type {values.dtype}, expected numbers")
        if values.ndim == 0:
            raise DataError(f"{where}: field '{name}' is a single value, expected one per step")
    if ep.rewards.ndim != 1:
        T = len(ep.rewards)
        raise DataError(f"{where}: field 'rewards' has shape {ep.rewards.shape}, expected ({T},)")
    T = len(ep.rewards)
    if T == 0:
        raise DataError(f"{where}: field 'rewards' is empty (an episode needs at least 1 step)")
    if ep.observations.ndim < 2:
        raise DataError(
            f"{where}: field 'observations' has shape {ep.observations.shape}, expected "
            f"(steps, *observation shape)"
        )
    if ep.actions.ndim != 2 and not (ep.actions.ndim == 1 and ep.actions.dtype.kind in "iu"):
        raise DataError(
            f"{where}: field 'actions' has shape {ep.actions.shape} ({ep.actions.dtype}), "
            f"expected ({T}, action_dim), or ({T},) integers for discrete actions"
        )
    for name in ("actions", "terminations", "truncations"):
        n = len(getattr(ep, name))
        if n != T:
            raise DataError(f"{where}: field '{name}' has {n} rows, expected {T} (as 'rewards')")
    if len(ep.observations) not in (T, T + 1):
        raise DataError(
            f"{where}: field 'observations' has {len(ep.observations)} rows, expected {T + 1} "
            f"(or {T}) for {T} steps"
        )
    for name in ("observations", "actions", "rewards", "terminations", "truncations"):
        _check_finite(getattr(ep, name), where, name)


def _check_finite(values: np.ndarray, where: str, name: str) -> None:
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: field '{name}' holds NaN or inf (first at row {row})")


def _one_line(err: BaseException) -> str:
    """A library's error message on one line (the CLI prints errors as one line)."""
    return " ".join(str(err).split())


def _d4rl_keys(f: Any, path: Path) -> set[str]:
    """The names at the top of a D4RL file."""
    try:
        return set(f.keys())
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:  # corrupt file
        raise DataError(f"{path}: cannot list its fields ({_one_line(err)})") from None


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _d4rl_field(f: Any, key: str, path: Path) -> np.ndarray:
    """One field of a D4RL file: a dataset of numbers or booleans with one row per step."""
    import h5py

    try:
        obj = f[key]
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{path}: field '{key}' is an HDF5 group, expected a dataset")
        size = int(np.prod(obj.shape, dtype=np.float64) * obj.dtype.itemsize)
        if size > _memory_bytes():  # a header can declare any size: refuse before allocating
            raise DataError(
                f"{path}: field '{key}' declares shape {obj.shape} ({size / 2**30:.0f} GiB), "
                "more than this machine's memory"
            )
        values = np.asarray(obj[()])
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:  # corrupt file
        raise DataError(f"{path}: cannot read field '{key}' ({_one_line(err)})") from None
    if values.ndim == 0:
        raise DataError(f"{path}: field '{key}' is a single value, expected one row per step")
    if values.dtype.kind not in "biuf":
        raise DataError(f"{path}: field '{key}' has type {values.dtype}, expected numbers")
    return values


# --- D4RL HDF5 -----------------------------------------------------------------------------------
def read_d4rl_hdf5(
    path: str | os.PathLike, env_id: str | None = None, max_episode_steps: int | None = None
) -> TrajectoryDataset:
    """Read a D4RL file (``observations``, ``actions``, ``rewards``, ``terminals``,
    ``timeouts``; flat arrays of N steps) and split it into episodes.

    An episode ends after a step with ``terminals`` (the environment ended it) or ``timeouts``
    (the time limit cut it), as the official DT data script does. If the file ends in the
    middle of an episode, that episode is kept and marked truncated at its last step.
    ``next_observations``, where present, supplies each episode's final observation.
    Files without ``timeouts`` (some D4RL v0 files) need ``max_episode_steps``: episodes are
    then also cut every that many steps, again as the official script does; without it the
    file is refused rather than merging episodes silently.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"D4RL file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        present = _d4rl_keys(f, path)
        for key in D4RL_REQUIRED:
            if key not in present:
                raise DataError(
                    f"{path}: missing field '{key}'; a D4RL file needs "
                    f"{', '.join(D4RL_REQUIRED)} and 'timeouts'"
                )
        if "timeouts" not in present and max_episode_steps is None:
            raise DataError(
                f"{path}: missing field 'timeouts'; pass max_episode_steps to cut episodes at the "
                f"time limit instead"
            )
        data = {k: _d4rl_field(f, k, path) for k in (*D4RL_REQUIRED, "timeouts") if k in present}
        has_next = "next_observations" in present
        next_obs = _d4rl_field(f, "next_observations", path) if has_next else None
        try:
            attrs = {k: _jsonable(v) for k, v in f.attrs.items()}
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
            raise DataError(f"{path}: cannot read its attributes ({_one_line(err)})") from None
    where = str(path)
    obs = data["observations"]
    n = len(obs)
    if n == 0:
        raise DataError(f"{where}: field 'observations' is empty")
    rewards = data["rewards"]
    if rewards.ndim == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    lengths = {k: len(v) for k, v in data.items()}
    if next_obs is not None:
        lengths["next_observations"] = len(next_obs)
    for key, length in lengths.items():
        if length != n:
            raise DataError(
                f"{where}: field '{key}' has {length} rows, expected {n} (as 'observations')"
            )
    if rewards.ndim != 1:
        shape = data["rewards"].shape
        raise DataError(f"{where}: field 'rewards' has shape {shape}, expected ({n},)")
    for key in ("terminals", "timeouts"):
        if key in data and data[key].size != n:
            shape = data[key].shape
            raise DataError(f"{where}: field '{key}' has shape {shape}, expected ({n},)")
    for key in ("observations", "actions", "terminals", "timeouts"):
        if key in data:
            _check_finite(data[key], where, key)
    _check_finite(rewards, where, "rewards")
    if next_obs is not None:
        _check_finite(next_obs, where, "next_observations")

    terminals = data["terminals"].reshape(n).astype(bool)
    timeouts = data["timeouts"].reshape(n).astype(bool) if "timeouts" in data else np.zeros(n, bool)
    if "timeouts" not in data:
        # The official script's rule for files without timeouts: a new episode after
        # max_episode_steps steps without a terminal.
        timeouts = _cut_every(terminals, max_episode_steps)
    ends = np.flatnonzero(terminals | timeouts) + 1  # exclusive end of each finished episode
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
        timeouts = timeouts.copy()
        timeouts[-1] = True  # the file ended mid-episode: that episode was cut
    starts = np.concatenate([[0], ends[:-1]])
    episodes = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        o = obs[s:e]
        if next_obs is not None:
            o = np.concatenate([o, next_obs[e - 1 : e]])
        episodes.append(
            Episode(o, data["actions"][s:e], rewards[s:e], terminals[s:e], timeouts[s:e])
        )
    ds = TrajectoryDataset(
        episodes, env_id=env_id, source=f"d4rl-hdf5:{path}", metadata={"attrs": attrs}
    )
    ds.validate(where)
    return ds


def _cut_every(terminals: np.ndarray, limit: int) -> np.ndarray:
    cuts = np.zeros_like(terminals)
    t = 0
    for i, done in enumerate(terminals.tolist()):  # sequential by nature; only for old files
        t += 1
        if done:
            t = 0
        elif t == limit:
            cuts[i], t = True, 0
    return cuts


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


# --- Minari ---------------------------------------------------------------------------------------
def minari_data_dir(path: str | os.PathLike) -> Path:
    """A Minari data set folder is ``<dataset>/data/{metadata.json, main_data.hdf5}``; accept the
    data set folder or its ``data`` folder."""
    path = Path(path)
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").is_file():
            return candidate
    raise DataError(
        f"no Minari data set at {path}: expected {path / 'data' / 'metadata.json'} "
        f"(a Minari data set folder, e.g. ~/.minari/datasets/<id>)"
    )


def read_minari(path: str | os.PathLike) -> TrajectoryDataset:
    """Read a Minari data set from a folder on local disk (no download): the folder written
    by :func:`write_minari`, by ``minari.DataCollector``/``create_dataset_from_buffers`` or by
    ``minari download`` (``$MINARI_DATASETS_PATH/<id>``)."""
    import minari

    data_dir = minari_data_dir(path)
    return _from_minari(lambda: minari.MinariDataset(data_dir), data_dir, f"minari:{data_dir}")


# A Minari data set id: (namespace/)(env/)name-v<version>, e.g. mujoco/hopper/medium-v0.
MINARI_ID = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*-v\d+")


def read_minari_id(dataset_id: str) -> TrajectoryDataset:
    """Read the Minari data set ``dataset_id`` (e.g. ``mujoco/hopper/medium-v0``) through
    ``minari.load_dataset``, from ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).
    Never downloads: a data set not there is an error saying how to fetch it."""
    import minari
    from minari.storage import get_dataset_path

    folder = get_dataset_path(dataset_id)
    if not (folder / "data").is_dir():
        root = os.environ.get("MINARI_DATASETS_PATH")
        where = (
            f"MINARI_DATASETS_PATH={root}"
            if root
            else "~/.minari/datasets (MINARI_DATASETS_PATH unset)"
        )
        raise DataError(
            f"no Minari data set {dataset_id!r} in {where}, and no folder of that name: "
            f"download it first with `minari download {dataset_id}` (needs network), or set "
            "MINARI_DATASETS_PATH to the folder that holds it"
        )
    data_dir = folder / "data"
    return _from_minari(
        lambda: minari.load_dataset(dataset_id), data_dir, f"minari:{dataset_id} ({data_dir})"
    )


def _from_minari(open_dataset, data_dir: Path, source: str) -> TrajectoryDataset:
    """Our episodes from the MinariDataset ``open_dataset()`` returns, checked; its
    metadata's id, description and reference scores (``ref_min_score``/``ref_max_score``,
    what ``minari.get_normalized_score`` reads) in ``metadata``, with its env spec
    (``env_spec``, JSON), registered with gymnasium where its id is not (a data set
    collected in ``mymod:MyEnv-v0`` names ``MyEnv-v0``, which only importing mymod
    registers), so that evaluation can rebuild the environment."""
    where = str(data_dir / "main_data.hdf5")
    try:
        ds = open_dataset()
        raw = [(e.id, e) for e in ds.iterate_episodes()]
        space, env_spec = ds.action_space, ds.env_spec
    except Exception as err:  # minari and h5py raise many error types on malformed files
        raise DataError(
            f"{data_dir}: not a readable Minari data set ({type(err).__name__}: {_one_line(err)})"
        ) from None
    episodes = []
    for ep_id, e in raw:
        if not isinstance(e.observations, np.ndarray) or not isinstance(e.actions, np.ndarray):
            raise DataError(
                f"{where}: episode_{ep_id}: dict or tuple observation/action spaces are not "
                f"supported; expected Box or Discrete"
            )
        episode = Episode(
            np.asarray(e.observations),
            np.asarray(e.actions),
            np.asarray(e.rewards),
            np.asarray(e.terminations),
            np.asarray(e.truncations),
        )
        check_episode(episode, f"{where}: episode_{ep_id}")  # before converting the types
        episode.rewards = episode.rewards.astype(np.float64)
        episode.terminations = episode.terminations.astype(bool)
        episode.truncations = episode.truncations.astype(bool)
        episodes.append(episode)
    if not episodes:
        raise DataError(f"{where}: the data set holds no episodes")
    meta = json.loads((data_dir / "metadata.json").read_text())
    extra = {
        k: meta[k]
        for k in ("dataset_id", "algorithm_name", "description", "ref_min_score", "ref_max_score")
        if k in meta
    }
    if hasattr(space, "n"):
        extra["n_actions"] = int(space.n)
    env_id = None
    if env_spec is not None:
        env_id = env_spec.id
        extra["env_spec"] = env_spec.to_json()
        register_env_spec(extra["env_spec"])
    result = TrajectoryDataset(episodes, env_id=env_id, source=source, metadata=extra)
    result.validate(where)
    return result


def write_minari(
    dataset: TrajectoryDataset,
    path: str | os.PathLike,
    dataset_id: str | None = None,
    algorithm_name: str = "unicomp",
    description: str = "",
    ref_scores: tuple[float, float] | None = None,
) -> Path:
    """Write ``dataset`` as a Minari data set folder ``path`` (``path/data/...``) with
    Minari's public writer (``minari.create_dataset_from_buffers``), readable by
    ``minari.MinariDataset(path / "data")`` and, moved under ``$MINARI_DATASETS_PATH/<id>``,
    by ``minari.load_dataset(id)``. The environment's spec is stored where gymnasium knows
    the id (``module:Env-v0`` too); ``ref_scores`` (random, expert returns) are stored as
    ``ref_min_score``/``ref_max_score`` where there is an environment (Minari keeps them
    only then). Minari writes under ``MINARI_DATASETS_PATH``: we point that at a temporary
    folder in ``path`` for the call and move the result into place, so that a crash never
    leaves a half-written data set. Returns the data folder."""
    import minari
    from minari.data_collector import EpisodeBuffer

    path = Path(path).absolute()  # Minari joins a relative folder onto itself (get_size)
    final = path / "data"
    if final.exists():
        raise UnicompError(f"{path} already holds a Minari data set; choose another folder")
    dataset.validate(f"data set for {path}")
    dataset_id = dataset_id or default_dataset_id(dataset.env_id, tag=content_tag(dataset))
    env_spec = env_spec_of(dataset.env_id) if dataset.env_id else None
    obs_space, act_space = _spaces(dataset, env_spec)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / ".minari.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    refs = {}
    if ref_scores is not None and env_spec is not None:
        refs = {"ref_min_score": float(ref_scores[0]), "ref_max_score": float(ref_scores[1])}
    buffers = [
        EpisodeBuffer(
            observations=e.observations,
            actions=e.actions,
            rewards=np.asarray(e.rewards, dtype=np.float64),
            terminations=np.asarray(e.terminations, dtype=bool),
            truncations=np.asarray(e.truncations, dtype=bool),
        )
        for e in dataset.episodes
    ]
    # minari 0.5.4 JPEG-encodes image observations unless told not to: keep frames exact.
    writer = minari.create_dataset_from_buffers
    lossless = {"jpeg_encoding": False} if "jpeg_encoding" in signature(writer).parameters else {}
    try:
        with _minari_root(tmp), warnings.catch_warnings():
            # Minari warns of every optional field left out (author, code link, eval env).
            warnings.filterwarnings("ignore", r".*(is set to None|env_spec is None)")
            writer(
                dataset_id,
                buffers,
                env=env_spec,
                algorithm_name=algorithm_name,
                description=description or f"written by unicomp from {dataset.source}",
                observation_space=obs_space,
                action_space=act_space,
                **refs,
                **lossless,
            )
        os.replace(tmp / dataset_id / "data", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _minari_root(folder: Path):
    """``MINARI_DATASETS_PATH`` set to ``folder`` for the duration (where Minari's public
    writer puts a new data set), restored after."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def default_dataset_id(env_id: str | None, name: str = "dataset", tag: str = "") -> str:
    """A Minari id, (namespace/)(env/)name(-tag)-v<version>: ``unicomp/hopper/<name>-v0`` for
    Hopper-v5, ``unicomp/breakout/...`` for ALE/Breakout-v5, ``unicomp/myenv/...`` for
    mymod:MyEnv-v0; ``tag`` (:func:`content_tag`) tells apart collections of one
    environment: ``unicomp/hopper/custom-3f2a9c01-v0``."""
    env = (env_id or "unknown").rsplit("-v", 1)[0].split("/")[-1].split(":")[-1].lower()
    name = f"{name}-{tag}" if tag else name
    return f"unicomp/{re.sub(r'[^a-z0-9_.-]', '_', env) or 'unknown'}/{name}-v0"


def content_tag(dataset: TrajectoryDataset) -> str:
    """8 hex digits of a hash of the data set's episode lengths, actions and rewards: the
    same for the same episodes, different for two collections (their actions differ), and
    cheap (observations, the bulk of image data, are left out)."""
    digest = hashlib.sha256()
    for e in dataset.episodes:
        digest.update(np.int64(len(e)).tobytes())
        digest.update(np.ascontiguousarray(e.actions).tobytes())
        digest.update(np.ascontiguousarray(e.rewards, dtype=np.float64).tobytes())
    return digest.hexdigest()[:8]


def _spaces(dataset: TrajectoryDataset, env_spec=None):
    import gymnasium as gym

    obs = dataset.episodes[0].observations
    if np.issubdtype(obs.dtype, np.integer):  # images: uint8 in [0, 255]
        info = np.iinfo(obs.dtype)
        obs_space = gym.spaces.Box(info.min, info.max, shape=obs.shape[1:], dtype=obs.dtype)
    else:
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=obs.shape[1:], dtype=obs.dtype)
    if dataset.discrete:
        return obs_space, gym.spaces.Discrete(dataset.action_dim)
    if env_spec is not None:
        # The environment's own bounds (e.g. [-1, 1] for the MuJoCo tasks).
        env = make_env(dataset.env_id)
        try:
            act_space = env.action_space
        finally:
            env.close()
        if act_space.shape == dataset.episodes[0].actions.shape[1:]:
            return obs_space, gym.spaces.Box(
                act_space.low, act_space.high, dtype=dataset.episodes[0].actions.dtype
            )
    a = dataset.episodes[0].actions
    return obs_space, gym.spaces.Box(-np.inf, np.inf, shape=a.shape[1:], dtype=a.dtype)


def read_dataset(path: str | os.PathLike, env_id: str | None = None) -> TrajectoryDataset:
    """A D4RL ``.hdf5``/``.h5`` file or a Minari data set folder, by what ``path`` is, or,
    where no such file or folder exists, a Minari data set id (``mujoco/hopper/medium-v0``,
    :func:`read_minari_id`). ``env_id`` overrides the data set's environment (a D4RL file
    names none: evaluating in an environment needs it)."""
    p = Path(path)
    if p.is_file() and p.suffix in (".hdf5", ".h5"):
        ds = read_d4rl_hdf5(p, env_id=env_id)
    elif p.is_dir() and any(p.glob("$store$_observation_ckpt.*.gz")):
        raise DataError(
            f"{p}: a DQN replay folder; import it first with unicomp dt collect --env "
            f"ALE/<Game>-v5 --dqn-replay {p} --transitions N --out DATA"
        )
    elif p.is_dir():
        ds = read_minari(p)
    elif not p.exists() and MINARI_ID.fullmatch(str(path)):
        ds = read_minari_id(str(path))
    else:
        raise DataError(
            f"{p}: expected a D4RL .hdf5 file, a Minari data set folder (with "
            "data/metadata.json) or a Minari data set id (e.g. mujoco/hopper/medium-v0)"
        )
    if env_id is not None:
        ds.env_id = env_id
    return ds


def read_datasets(data: str, env_id: str | None = None) -> TrajectoryDataset:
    """``data`` as :func:`read_dataset` reads it, or several data sets separated by commas
    (``data/a,data/b``) read each and combined (:func:`combine_datasets`)."""
    names = [name.strip() for name in str(data).split(",")]
    if len(names) == 1:
        return read_dataset(names[0], env_id)
    if "" in names:
        raise DataError(f"--data {data!r}: an empty name between commas")
    return combine_datasets([read_dataset(name, env_id) for name in names], names)


def _space_of(ds: TrajectoryDataset) -> dict[str, str]:
    """What two data sets trained on together must share, as text for the error."""
    images = np.issubdtype(ds.episodes[0].observations.dtype, np.integer)
    kind = "discrete actions" if ds.discrete else "continuous values"
    return {
        "environment": str(ds.env_id),
        "observation shape": f"{ds.obs_shape}" + (" images" if images else ""),
        "actions": f"{ds.action_dim} {kind}",
    }


def combine_datasets(datasets: list[TrajectoryDataset], names: list[str]) -> TrajectoryDataset:
    """The episodes of every data set (``names``: how the user named them) as one, after a
    check that they share the environment and the observation and action spaces (a
    DataError naming the first difference). ``metadata["data_sets"]`` records each one (its
    name, Minari id, episodes, steps, returns); reference returns are kept where every data
    set has the same ones; the environment spec is the first's."""
    first = _space_of(datasets[0])
    for name, ds in zip(names[1:], datasets[1:], strict=True):
        for what, value in _space_of(ds).items():
            if value != first[what]:
                raise DataError(
                    f"--data: {names[0]} and {name} differ in {what} ({first[what]} against "
                    f"{value}); data sets trained on together must share environment, "
                    "observations and actions"
                )
    metas = [ds.metadata for ds in datasets]
    meta = {k: v for k, v in metas[0].items() if k in ("env_spec", "n_actions")}
    for key in ("ref_min_score", "ref_max_score"):
        values = {m.get(key) for m in metas}
        if len(values) == 1 and None not in values:
            meta[key] = values.pop()
    meta["data_sets"] = [
        {"data": name, "dataset_id": ds.metadata.get("dataset_id"), **ds.summary()}
        for name, ds in zip(names, datasets, strict=True)
    ]
    return TrajectoryDataset(
        [e for ds in datasets for e in ds.episodes],
        env_id=datasets[0].env_id,
        source=" + ".join(ds.source for ds in datasets),
        metadata=meta,
    )


# --- data selections (%BC, paper sec. 5.3; delayed rewards, sec. 5.5) -------------------------
# %BC trains on the best X% of the data. As in the official gym code (``pct_traj``), X% counts
# timesteps: the episodes are ranked by return and the best ones are kept while their steps fit
# in X% of all steps (at least the single best episode).
def top_episode_ids(dataset: TrajectoryDataset, percent: float) -> np.ndarray:
    """Indices (sorted) of the best episodes by return whose steps fit in ``percent`` % of the
    data set's steps; always at least the best episode. Ties keep the earlier episode first."""
    if not 0 < percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {percent}")
    returns = dataset.returns()
    lengths = np.array([len(e) for e in dataset.episodes], dtype=np.int64)
    order = np.argsort(-returns, kind="stable")  # best first
    budget = max(1, int(percent / 100.0 * lengths.sum()))
    fits = np.cumsum(lengths[order]) <= budget  # a prefix of the ranking
    n = max(1, int(fits.sum()))
    return np.sort(order[:n])


def select_top_percent(dataset: TrajectoryDataset, percent: float) -> TrajectoryDataset:
    """The data set restricted to its best ``percent`` % of steps (see ``top_episode_ids``)."""
    if percent >= 100:
        return dataset
    ids = top_episode_ids(dataset, percent)
    meta = {
        **dataset.metadata,
        "top_percent": percent,
        "selected_episodes": len(ids),
        "source_episodes": len(dataset),
        "min_selected_return": float(dataset.returns()[ids].min()),
    }
    return TrajectoryDataset(
        [dataset.episodes[i] for i in ids],
        env_id=dataset.env_id,
        source=f"{dataset.source} (best {percent:g}% of steps: {len(ids)} episodes)",
        metadata=meta,
    )


def delay_rewards(dataset: TrajectoryDataset) -> TrajectoryDataset:
    """Paper sec. 5.5 (sparse, delayed reward): every reward of an episode is withheld and
    their sum given at its last step. Returns-to-go then equal the episode's return at every
    step; the data set's returns are unchanged."""
    episodes = []
    for e in dataset.episodes:
        rewards = np.zeros_like(e.rewards)
        rewards[-1] = e.rewards.sum(dtype=np.float64)
        episodes.append(dataclasses.replace(e, rewards=rewards))
    return TrajectoryDataset(
        episodes,
        env_id=dataset.env_id,
        source=f"{dataset.source} (rewards delayed to the episode's end)",
        metadata={**dataset.metadata, "delayed_reward": True},
    )
