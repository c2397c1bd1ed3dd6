"""The DQN Replay Dataset's on-disk format, read into episodes.

The data set (Agarwal et al. 2020; gs://atari-replay-datasets/dqn/<Game>/<run>/
replay_logs/) is what the paper trained on (1% of it: 500k of 50M transitions). Each
checkpoint N of a run is dopamine's ``OutOfGraphReplayBuffer`` saved as gzipped ``np.save``
arrays (``'{name}_ckpt.{N}.gz'``): ``$store$_observation`` (capacity, 84, 84) uint8 single
frames, ``$store$_action`` int32, ``$store$_reward`` float32 (clipped to [-1, 1] by the
agent that logged them), ``$store$_terminal`` uint8, and ``add_count`` (transitions added
so far; the buffer is circular, with the next write at add_count % capacity). Row i holds
the frame in which action i was taken, its reward, and whether the episode ended after it.
Before each episode dopamine adds stack_size - 1 = 3 padding rows (zero frame, action 0,
reward 0), so that the first state's stack is [0, 0, 0, frame]. ``read_dqn_replay`` turns
such checkpoints into episodes of stacked frames (T, 4, 84, 84), checking every file and
never unpickling. Departures from the official loader (atari/create_dataset.py, through
dopamine): the padding rows are dropped (the official code keeps them as three steps with
blank frames and action 0 at the start of each episode); a buffer's partial episodes (at its
start, at the circular seam, at its end) are dropped whole; each buffer gives its first
``transitions / buffers`` steps of whole episodes in order (the official code draws
10-episode runs from random buffers, each starting at the buffer's beginning, until it has
``num_steps``: the same data in a different order).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np

from unicomp.errors import DataError, UnicompError
from unicomp.rl.atari import FRAME_STACK, atari_action_count, format_ranges
from unicomp.rl.trajectories import Episode, TrajectoryDataset

STORE = "$store$_"


_FIELDS = ("observation", "action", "reward", "terminal")


_CKPT = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")


def replay_logs_dir(path: str | os.PathLike) -> Path:
    """The folder holding the checkpoint files: ``path`` itself, or its ``replay_logs``."""
    path = Path(path)
    for candidate in (path, path / "replay_logs"):
        if candidate.is_dir() and any(_CKPT.match(p.name) for p in candidate.iterdir()):
            return candidate
    raise DataError(
        f"{path}: no DQN replay checkpoints ({STORE}observation_ckpt.N.gz) here or in "
        f"{path / 'replay_logs'}"
    )


def replay_suffixes(logs: Path) -> list[int]:
    """The checkpoint numbers N of a replay_logs folder, in order."""
    return sorted(int(m.group(1)) for p in logs.iterdir() if (m := _CKPT.match(p.name)))


def _ckpt_file(logs: Path, name: str, suffix: int) -> Path:
    return logs / f"{name}_ckpt.{suffix}.gz"


_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)


def _missing(path: Path) -> DataError:
    return DataError(f"{path}: missing (every checkpoint needs its {', '.join(_FIELDS)})")


def _load_small(path: Path) -> np.ndarray:
    """A whole gzipped .npy array; never unpickles."""
    try:
        with gzip.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise _missing(path) from None
    except _READ_ERRORS as err:
        raise DataError(f"{path}: not a gzipped numpy array ({_why(err)})") from None


def _why(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if "allow_pickle" in text or "Object arrays" in text:
        return "it holds pickled Python objects, which we never load"
    return text


def _open_rows(path: Path):
    """Open a gzipped .npy file; return (file, shape, dtype) with the file at the first row."""
    try:
        f = gzip.open(path, "rb")
    except FileNotFoundError:
        raise _missing(path) from None
    try:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header(f)
    except _READ_ERRORS as err:
        f.close()
        raise DataError(f"{path}: not a gzipped numpy array ({_why(err)})") from None
    if dtype.hasobject or fortran:
        f.close()
        what = "Python objects" if dtype.hasobject else "Fortran-ordered data"
        raise DataError(f"{path}: holds {what}; expected plain C-ordered numbers")
    return f, shape, dtype


def _read_rows(f, path: Path, shape: tuple, dtype: np.dtype, rows: int) -> np.ndarray:
    """The first ``rows`` rows of an array whose header was read by ``_open_rows``."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    want = rows * row_bytes
    try:
        data = f.read(want)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: truncated or corrupt ({_why(err)})") from None
    if len(data) < want:
        raise DataError(
            f"{path}: truncated: {len(data) // max(row_bytes, 1)} of the {shape[0]} rows its "
            f"header declares"
        )
    return np.frombuffer(data, dtype=dtype).reshape(rows, *shape[1:])


def _check_column(values: np.ndarray, path: Path, kinds: str, what: str) -> np.ndarray:
    if values.ndim != 1 or values.dtype.kind not in kinds:
        raise DataError(
            f"{path}: shape {values.shape} ({values.dtype}), expected one {what} per row"
        )
    return values


def _read_checkpoint_columns(logs: Path, suffix: int, n_actions: int | None):
    """Actions, rewards, terminals (checked) and add_count (None if its file is absent)."""
    paths = {k: _ckpt_file(logs, STORE + k, suffix) for k in _FIELDS}
    action = _check_column(_load_small(paths["action"]), paths["action"], "iu", "integer action")
    reward = _check_column(_load_small(paths["reward"]), paths["reward"], "fiu", "number")
    terminal = _check_column(
        _load_small(paths["terminal"]), paths["terminal"], "biu", "terminal flag"
    )
    n = len(action)
    for key, values in (("reward", reward), ("terminal", terminal)):
        if len(values) != n:
            raise DataError(
                f"{paths[key]}: {len(values)} rows, expected {n} (as {paths['action'].name})"
            )
    if n == 0:
        raise DataError(f"{paths['action']}: no rows")
    if reward.dtype.kind == "f" and not np.isfinite(reward).all():
        row = int(np.flatnonzero(~np.isfinite(reward))[0])
        raise DataError(f"{paths['reward']}: NaN or inf (first at row {row})")
    if not np.isin(terminal, (0, 1)).all():
        raise DataError(f"{paths['terminal']}: values other than 0 and 1")
    high = n_actions if n_actions else 1 << 16
    if action.min() < 0 or action.max() >= high:
        raise DataError(
            f"{paths['action']}: actions range {action.min()}..{action.max()}, expected "
            f"0..{high - 1}" + (f" (the game's {n_actions} actions)" if n_actions else "")
        )
    add_count = None
    count_path = _ckpt_file(logs, "add_count", suffix)
    if count_path.exists():
        count = _load_small(count_path)
        if count.size != 1 or count.dtype.kind not in "iu" or int(count.reshape(())) < 0:
            raise DataError(f"{count_path}: expected one non-negative integer, got {count!r}")
        add_count = int(count.reshape(()))
    return action.astype(np.int64), reward.astype(np.float64), terminal.astype(bool), add_count


def _segments(terminal: np.ndarray, add_count: int | None) -> list[tuple[int, int, bool]]:
    """Rows (start, end inclusive, start known) of the episodes of a buffer that end in it,
    in row order, padding rows included. A buffer that has wrapped around (add_count >=
    capacity) has its newest row just before add_count % capacity (the seam) and its oldest
    at it: an episode across the seam or starting at it is partial and left out, and so is
    the one at row 0 unless row capacity - 1 ended an episode. Without add_count, the start
    of row 0's episode is not known (the caller keeps it only if it begins with padding)."""
    cap = len(terminal)
    wrapped = add_count is not None and add_count >= cap
    n = cap if add_count is None or wrapped else add_count
    seam = add_count % cap if wrapped else None
    first: bool | None = None if add_count is None else not wrapped or bool(terminal[cap - 1])
    out, start = [], 0
    for end in np.flatnonzero(terminal[:n]).tolist():
        partial = first is False or (seam is not None and start <= seam <= end)
        if not partial:
            out.append((start, end, first is not None))
        first, start = True, end + 1
    return out


def _stack_frames(frames: np.ndarray, stack: int) -> np.ndarray:
    """(T, H, W) frames -> (T, stack, H, W): each step's last ``stack`` frames, zeros
    before the first (as dopamine's padding rows give)."""
    padded = np.concatenate([np.zeros((stack - 1, *frames.shape[1:]), frames.dtype), frames])
    windows = np.lib.stride_tricks.sliding_window_view(padded, stack, axis=0)  # (T, H, W, s)
    return np.ascontiguousarray(np.moveaxis(windows, -1, 1))


def _is_padding(frames, action, reward, terminal) -> np.ndarray:
    """Rows that are dopamine's padding: blank frame, action 0, reward 0, not terminal."""
    blank = ~frames.reshape(len(frames), -1).any(axis=1)
    return blank & (action == 0) & (reward == 0) & ~terminal


def read_dqn_replay_checkpoint(
    logs: Path,
    suffix: int,
    max_transitions: int | None = None,
    stack: int = FRAME_STACK,
    n_actions: int | None = None,
) -> list[Episode]:
    """The whole episodes of one checkpoint, in order, up to ``max_transitions`` steps
    (at least one episode when there is one). Reads only the observation rows it needs."""
    action, reward, terminal, add_count = _read_checkpoint_columns(logs, suffix, n_actions)
    obs_path = _ckpt_file(logs, STORE + "observation", suffix)
    f, shape, dtype = _open_rows(obs_path)
    with f:
        if len(shape) != 3 or dtype != np.uint8:
            raise DataError(
                f"{obs_path}: shape {shape} ({dtype}), expected (rows, 84, 84) uint8 frames"
            )
        if shape[0] != len(action):
            raise DataError(f"{obs_path}: {shape[0]} rows, expected {len(action)} (as its action)")
        chosen: list[tuple[int, int, bool]] = []
        total = 0
        for start, end, known in _segments(terminal, add_count):
            if max_transitions is not None and chosen and total >= max_transitions:
                break
            chosen.append((start, end, known))
            total += end - start + 1
        if not chosen:
            return []
        frames = _read_rows(f, obs_path, shape, dtype, chosen[-1][1] + 1)
    episodes = []
    for start, end, known in chosen:
        rows = slice(start, end + 1)
        pad = _is_padding(frames[rows], action[rows], reward[rows], terminal[rows])
        skip = min(int(np.argmin(pad)) if not pad.all() else len(pad), stack - 1)
        if not known and skip < stack - 1:
            continue  # row 0 of a buffer without add_count, not an episode's start
        first = start + skip  # dopamine's stack - 1 padding rows dropped
        if first > end:
            continue
        rows = slice(first, end + 1)
        T = end + 1 - first
        terminations = np.zeros(T, bool)
        terminations[-1] = True
        episodes.append(
            Episode(
                observations=_stack_frames(frames[rows], stack),
                actions=action[rows],
                rewards=reward[rows],
                terminations=terminations,
                truncations=np.zeros(T, bool),
            )
        )
    return episodes


def read_dqn_replay(
    path: str | os.PathLike,
    transitions: int | None = None,
    suffixes: list[int] | None = None,
    env_id: str | None = None,
    n_actions: int | None = None,
    stack: int = FRAME_STACK,
    log=None,
) -> TrajectoryDataset:
    """Episodes from a DQN replay run (its replay_logs folder, or the folder above it).

    ``transitions``: the subset's size in steps (the paper's 1%: 500,000 of a game's 50
    checkpoints of 1M), split evenly over the checkpoints read: each gives its first whole
    episodes up to its share. ``suffixes``: which checkpoints (default all; the official
    code draws from the last ``num_buffers`` of 50). ``n_actions``: the game's action count
    (checked against the data; default the environment's where ``env_id`` is given)."""
    logs = replay_logs_dir(path)
    found = replay_suffixes(logs)
    if suffixes is None:
        suffixes = found
    missing = [s for s in suffixes if s not in found]
    if missing:
        raise DataError(
            f"{_ckpt_file(logs, STORE + 'observation', missing[0])}: missing; checkpoints "
            f"here: {format_ranges(found)}"
        )
    if transitions is not None and transitions < 1:
        raise UnicompError(f"transitions must be at least 1, got {transitions}")
    if n_actions is None and env_id is not None:
        n_actions = atari_action_count(env_id)
    share = None if transitions is None else math.ceil(transitions / len(suffixes))
    episodes: list[Episode] = []
    for suffix in suffixes:
        got = read_dqn_replay_checkpoint(logs, suffix, share, stack, n_actions)
        if log is not None:
            steps = sum(len(e) for e in got)
            log(f"checkpoint {suffix}: {len(got)} episodes, {steps} steps")
        episodes.extend(got)
    if not episodes:
        raise DataError(f"{logs}: no whole episode in checkpoints {format_ranges(suffixes)}")
    meta = {"dqn_replay_checkpoints": list(suffixes), "transitions_requested": transitions}
    if n_actions:
        meta["n_actions"] = n_actions
    ds = TrajectoryDataset(episodes, env_id=env_id, source=f"dqn-replay:{logs}", metadata=meta)
    ds.validate(str(logs))
    return ds
