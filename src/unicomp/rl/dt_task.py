"""The Decision Transformer's training task: windows of K steps of (R, s, a) for the one loop.

Sampling follows the official gym code (kzl/decision-transformer, gym/experiment.py): it picks
an episode with probability proportional to its length, then a uniform start step t, and
takes steps t .. t+K-1, cut at the episode's end and padded at the front (mask 0) to K steps.
Together that is a uniform draw of the start step over all steps of the data, which is how we
sample, without a per-sample Python loop: flat arrays over every step, (B, K) index tensors.

Inputs as in the official code: states normalised by the training data's mean and standard
deviation (+1e-6); returns-to-go (undiscounted sums of future rewards in the episode)
divided by ``rtg_scale`` (1000 for the MuJoCo tasks); timesteps clipped to max_ep_len - 1;
padding is zeros (the official code pads actions with -10; padded steps are masked out of
attention and of the loss, so the value does not matter).

Departure: the official code trains on every episode and reports returns in the
environment. We hold out whole episodes for validation and test (``val_fraction``,
``test_fraction``; the loop picks its checkpoint by validation loss), so the model sees a few
percent less data. Set both to small values to approach the paper's setting.

Targets ``y``: the window's actions, (B, K, act) or (B, K) ids, zero at padded steps;
``target_mask`` (B, K) marks the real steps, which alone the loss and accuracy read.

Options for the baselines and the paper's other experiments (the data selections of
unicomp.rl.trajectories):
``use_returns=False`` feeds zeros as returns-to-go (behaviour cloning: the models built for it
do not read them at all); ``top_percent`` keeps the best X% of the data's steps by episode
return before the split (%BC), so validation and test episodes come from the same selection;
``delayed_reward`` moves every reward of an episode to its last step (paper sec. 5.5).
Departure for %BC: the state mean/std come from the selected training episodes (the official
code takes them from all episodes, before selecting).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from unicomp.errors import DataError
from unicomp.models.decision_transformer import one_hot_actions
from unicomp.rl.datasets import read_datasets
from unicomp.rl.trajectories import TrajectoryDataset, delay_rewards, select_top_percent
from unicomp.tasks.base import Batch, Scored, Task, TaskSpec, batch_generator, shard_range


class _Flat:
    """Every step of a set of episodes as flat arrays (tensors), with per-step episode bounds."""

    def __init__(self, ds: TrajectoryDataset, ids: np.ndarray, max_ep_len: int):
        eps = [ds.episodes[i] for i in ids]
        lengths = np.array([len(e) for e in eps], dtype=np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        self.n = int(ends[-1])
        self.states = np.concatenate([e.states for e in eps])  # (N, *obs)
        self.actions = np.concatenate([e.actions for e in eps])  # (N, act) or (N,)
        rewards = np.concatenate([e.rewards for e in eps]).astype(np.float64)  # (N,)
        episode = np.repeat(np.arange(len(eps)), lengths)  # (N,) episode of each step
        # Return-to-go without a loop: the episode's total minus what came before the step.
        csum = np.cumsum(rewards)
        before = csum - rewards - np.repeat(csum[starts] - rewards[starts], lengths)
        self.rtg = np.repeat(np.add.reduceat(rewards, starts), lengths) - before  # (N,)
        self.timesteps = np.minimum(np.arange(self.n) - starts[episode], max_ep_len - 1)
        self.ep_start = starts[episode]  # (N,) first step of each step's episode
        self.ep_end = ends[episode]  # (N,) one past its last step
        self.lengths = lengths


class DTTask(Task):
    """Windows of ``context`` steps from a trajectory data set (see the module docstring).

    dataset: a TrajectoryDataset, or a path (D4RL .hdf5 file or Minari folder) or Minari id,
    or several separated by commas, trained on together (read_datasets).
    """

    name = "dt"
    select_by = "loss"
    default_train = {
        # Paper appendix A / the official gym settings. The warm-up, 10,000 of the paper's
        # 100,000 steps, as that fraction of the run's steps where --warmup-steps is not
        # given (unicomp.config.train_settings): 10,000 at the paper's length, 30 at 300.
        "steps": 100_000,
        "batch_size": 64,
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "warmup_fraction": 0.1,
        "grad_clip": 0.25,
        "eval_every": 1000,
    }

    def __init__(
        self,
        dataset: TrajectoryDataset | str | os.PathLike,
        context: int = 20,
        rtg_scale: float = 1000.0,
        max_ep_len: int = 1000,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        eval_windows: int = 2048,
        split_seed: int = 0,
        env_id: str | None = None,
        use_returns: bool = True,
        top_percent: float = 100.0,
        delayed_reward: bool = False,
    ):
        ds = dataset if isinstance(dataset, TrajectoryDataset) else read_datasets(dataset, env_id)
        self.source_summary = ds.summary()  # before any selection
        if not 0 < top_percent <= 100:
            raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
        ds = select_top_percent(ds, top_percent)
        if delayed_reward:
            ds = delay_rewards(ds)
        self.use_returns, self.top_percent = use_returns, float(top_percent)
        self.delayed_reward = delayed_reward
        if len(ds) < 3:
            raise DataError(
                f"{ds.source}: {len(ds)} episode(s); the DT task needs at least 3 "
                f"(train, validation and test hold whole episodes)"
                + ("; raise --top-percent" if top_percent < 100 else "")
            )
        if context < 1:
            raise ValueError(f"context must be at least 1, got {context}")
        self.dataset, self.context, self.rtg_scale = ds, context, float(rtg_scale)
        self.max_ep_len, self.eval_windows = max_ep_len, eval_windows
        self.env_id = env_id or ds.env_id
        self.data_source = ds.source
        self.discrete = ds.discrete
        self.act_dim = ds.action_dim
        self.image = len(ds.obs_shape) > 1

        perm = np.random.default_rng(split_seed).permutation(len(ds))
        n_val = max(1, round(val_fraction * len(ds)))
        n_test = max(1, round(test_fraction * len(ds)))
        if n_val + n_test >= len(ds):
            raise DataError(
                f"{ds.source}: {len(ds)} episodes leave none for training after {n_val} "
                f"validation and {n_test} test episodes"
            )
        self.split_ids = {
            "val": np.sort(perm[:n_val]),
            "test": np.sort(perm[n_val : n_val + n_test]),
            "train": np.sort(perm[n_val + n_test :]),
        }
        self._flat = {k: _Flat(ds, ids, max_ep_len) for k, ids in self.split_ids.items()}

        train_states = self._flat["train"].states
        if self.image:
            # Images: scale uint8 pixels to [0, 1] rather than standardise per pixel.
            self.state_mean, self.state_std = None, None
        else:
            self.state_mean = train_states.mean(0).astype(np.float32)
            self.state_std = (train_states.std(0) + 1e-6).astype(np.float32)
        self._tensors = {k: self._to_tensors(f) for k, f in self._flat.items()}
        self.spec = TaskSpec(
            max_len=context,
            d_out=self.act_dim,
            n_classes=self.act_dim if self.discrete else 1,
            d_in=int(np.prod(ds.obs_shape)),
        )
        self._splits: dict[str, Batch] = {}

    # --- sampling ------------------------------------------------------------------------------
    def _to_tensors(self, f: _Flat) -> dict[str, torch.Tensor]:
        states = torch.as_tensor(f.states)
        if self.image:
            # uint8 frames stay uint8 (a quarter of float32's memory); ``windows`` scales them
            states = states if states.dtype == torch.uint8 else states.float()
        else:
            states = (states.float() - torch.as_tensor(self.state_mean)) / torch.as_tensor(
                self.state_std
            )
        if self.discrete:
            actions = torch.as_tensor(f.actions, dtype=torch.long)
        else:
            actions = torch.as_tensor(f.actions, dtype=torch.float32)
        return {
            "states": states,
            "actions": actions,
            "rtg": torch.as_tensor(f.rtg / self.rtg_scale, dtype=torch.float32),
            "timesteps": torch.as_tensor(f.timesteps, dtype=torch.long),
            "ep_end": torch.as_tensor(f.ep_end),
        }

    def windows(self, split: str, starts: torch.Tensor) -> Batch:
        """The windows that begin at flat step indices ``starts`` (B,) of ``split``, gathered
        where the split's tensors are (the training device once ``place``d there)."""
        t = self._tensors[split]
        K = self.context
        starts = starts.to(t["ep_end"].device, non_blocking=True)
        end = torch.minimum(starts + K, t["ep_end"][starts])  # (B,) exclusive
        idx = end[:, None] - K + torch.arange(K, device=starts.device)  # (B, K), left-padded
        mask = idx >= starts[:, None]  # (B, K) real steps
        idx = idx.clamp(min=0)  # padded slots read any valid row, then are zeroed

        def take(x: torch.Tensor) -> torch.Tensor:
            v = x[idx]  # (B, K, ...)
            m = mask.reshape(*mask.shape, *([1] * (v.dim() - 2)))
            return torch.where(m, v, v.new_zeros(()))

        actions = take(t["actions"])  # (B, K) ids or (B, K, act); 0 at padded steps
        if self.discrete:
            action_in = one_hot_actions(actions, self.act_dim) * mask[..., None]
        else:
            action_in = actions
        rtg = take(t["rtg"])[..., None]  # (B, K, 1)
        # (B, K, *obs); image frames stay uint8 (a quarter of float32's bytes to gather and
        # copy): the model scales them to [0, 1] on its device
        states = take(t["states"])
        x = {
            "returns_to_go": rtg if self.use_returns else torch.zeros_like(rtg),
            "states": states,
            "actions": action_in,  # (B, K, act)
            "timesteps": take(t["timesteps"]),  # (B, K)
        }
        return Batch(x=x, y=actions, mask=mask.long(), target_mask=mask)

    stored = ("_tensors", "_splits")

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return self.train_shard(step, batch_size, seed, 0, 1)

    def train_shard(self, step: int, batch_size: int, seed: int, rank: int, world: int) -> Batch:
        g = batch_generator(seed, step)
        starts = torch.randint(0, self._flat["train"].n, (batch_size,), generator=g)
        return self.windows("train", starts[shard_range(batch_size, rank, world)])

    def split(self, name: str) -> Batch:
        """A fixed set of windows from the held-out episodes: every start step, or a seeded
        sample of ``eval_windows`` of them when there are more."""
        if name not in self._splits:
            n = self._flat[name].n
            if n <= self.eval_windows:
                starts = torch.arange(n)
            else:
                g = torch.Generator().manual_seed(12345 + (name == "test"))
                starts = torch.randperm(n, generator=g)[: self.eval_windows].sort().values
            self._splits[name] = self.windows(name, starts)
        return self._splits[name]

    # --- metric --------------------------------------------------------------------------------
    def loss(
        self, outputs: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Over the real steps (``target_mask`` (B, K); None: every step): mean squared error
        over them and the action dimensions (the official loss), or cross-entropy (discrete).
        Weighted sums rather than boolean-mask selection (whose shape depends on the mask's
        values: a host sync on a GPU); outputs at padded steps are replaced, never looked at."""
        if target_mask is None:
            target_mask = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        real = target_mask.bool()
        count = real.sum().clamp_min(1)
        if self.discrete:
            per_step = F.cross_entropy(
                outputs.float().flatten(0, 1), y.flatten(), reduction="none"
            ).view(y.shape)
        else:
            per_step = (outputs.float() - y.float()).square().mean(-1)  # (B, K)
        return torch.where(real, per_step, per_step.new_zeros(())).sum() / count

    def correct(
        self, outputs: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> Scored:
        """Discrete: correct actions over real steps. Continuous: nothing to count (zeros)."""
        if not self.discrete:
            return Scored(0, 0, 0, y.shape[0])
        real = torch.ones_like(y, dtype=torch.bool) if target_mask is None else target_mask.bool()
        hit = (outputs.argmax(-1) == y) & real
        full = (hit | ~real).all(1)
        return Scored(hit.sum(), real.sum(), full.sum(), y.shape[0])

    def normalization(self) -> dict:
        """What an agent needs to act as in training (see unicomp.rl.evaluate.DTAgent)."""
        return {
            "state_mean": None if self.state_mean is None else self.state_mean.tolist(),
            "state_std": None if self.state_std is None else self.state_std.tolist(),
            "rtg_scale": self.rtg_scale,
            "max_ep_len": self.max_ep_len,
            "context": self.context,
            "use_returns": self.use_returns,
            "delayed_reward": self.delayed_reward,
        }
