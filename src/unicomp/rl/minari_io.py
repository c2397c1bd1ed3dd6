"""Minari data sets (Farama) in the in-memory format of unicomp.rl.trajectories: read from a
folder on local disk or by id from ``$MINARI_DATASETS_PATH`` (never downloaded), written
with Minari's public writer; the ids unicomp gives the data sets it writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from inspect import signature
from pathlib import Path

import numpy as np

from unicomp.errors import DataError, UnicompError, one_line
from unicomp.rl.envs import env_spec_of, make_env, register_env_spec
from unicomp.rl.trajectories import Episode, TrajectoryDataset, check_episode


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
            f"{data_dir}: not a readable Minari data set ({type(err).__name__}: {one_line(err)})"
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
