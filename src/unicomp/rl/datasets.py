"""A data set by the name the user gives it: a D4RL file, a Minari folder or a Minari id,
or several of them, comma-separated, combined into one."""

from __future__ import annotations

import os
from pathlib import Path

from unicomp.errors import DataError
from unicomp.rl.d4rl_io import read_d4rl_hdf5
from unicomp.rl.minari_io import MINARI_ID, read_minari, read_minari_id
from unicomp.rl.trajectories import TrajectoryDataset, combine_datasets


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
