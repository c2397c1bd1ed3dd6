"""The one in-memory format for offline RL data: episodes, the data set that holds them,
its statistics and checks, and the selections training makes of it (%BC, delayed rewards).
The file formats live beside it: unicomp.rl.d4rl_io (D4RL HDF5), unicomp.rl.minari_io
(Minari folders and ids, and the writer), unicomp.rl.datasets (a data set by its name).

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

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unicomp.errors import DataError


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
        check_finite(getattr(ep, name), where, name)


def check_finite(values: np.ndarray, where: str, name: str) -> None:
    """Raise DataError if float ``values`` (field ``name`` of ``where``) hold NaN or inf,
    naming the first row that does."""
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: field '{name}' holds NaN or inf (first at row {row})")


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
