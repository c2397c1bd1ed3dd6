"""D4RL's HDF5 files (Fu et al. 2020) read into the in-memory format of
unicomp.rl.trajectories: flat arrays of steps split into episodes at terminals and
timeouts, every field checked (DataError naming the file and the field)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from unicomp.errors import DataError, one_line
from unicomp.rl.trajectories import Episode, TrajectoryDataset, check_finite

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def _d4rl_keys(f: Any, path: Path) -> set[str]:
    """The names at the top of a D4RL file."""
    try:
        return set(f.keys())
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:  # corrupt file
        raise DataError(f"{path}: cannot list its fields ({one_line(err)})") from None


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
        raise DataError(f"{path}: cannot read field '{key}' ({one_line(err)})") from None
    if values.ndim == 0:
        raise DataError(f"{path}: field '{key}' is a single value, expected one row per step")
    if values.dtype.kind not in "biuf":
        raise DataError(f"{path}: field '{key}' has type {values.dtype}, expected numbers")
    return values


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
            raise DataError(f"{path}: cannot read its attributes ({one_line(err)})") from None
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
            check_finite(data[key], where, key)
    check_finite(rewards, where, "rewards")
    if next_obs is not None:
        check_finite(next_obs, where, "next_observations")

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
