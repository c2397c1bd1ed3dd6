"""The forecasting baselines the field compares against, as models of the ``forecast`` task:
each takes its batches (the RevIN-normalised look-back window as patch tokens) and returns the
horizon in the window's normalised units, which the task de-normalises; so they are scored by
the same loss and metrics as the FPT.

* ``Naive``: every step of the horizon is the window's last value.
* ``SeasonalNaive``: step h is the value one season (``season`` steps) before it, repeating the
  window's last season.
* ``DLinear`` (Zeng et al., AAAI 2023, "Are Transformers Effective for Time Series
  Forecasting?"): the window split into a trend (a moving average of 25 steps, the ends padded
  with copies of the first and last step) and the rest, each mapped to the horizon by one
  linear layer shared by every channel (their ``individual=False``). Departure: it reads the
  RevIN-normalised window the FPT reads (the paper's DLinear reads the raw window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unicomp.tasks.timeseries import unpatch


class _WindowModel(nn.Module):
    """Base: rebuilds the (B, lookback) window from the task's patch tokens."""

    def __init__(self, lookback: int, horizon: int, patch: int, stride: int):
        super().__init__()
        self.lookback, self.horizon, self.patch, self.stride = lookback, horizon, patch, stride

    def window(self, x: torch.Tensor) -> torch.Tensor:
        return unpatch(x, self.patch, self.stride, self.lookback)  # (B, L)


class Naive(_WindowModel):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # the last token ends with the window's last step (the padding repeats it)
        return x[:, -1, -1:].expand(x.shape[0], self.horizon)  # (B, H)


class SeasonalNaive(_WindowModel):
    def __init__(self, lookback: int, horizon: int, patch: int, stride: int, season: int):
        super().__init__(lookback, horizon, patch, stride)
        if not 1 <= season <= lookback:
            raise ValueError(f"season {season} must be between 1 and the lookback {lookback}")
        self.season = season

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        last = self.window(x)[:, -self.season :]  # (B, m)
        steps = torch.arange(self.horizon, device=x.device) % self.season  # (H,)
        return last[:, steps]  # (B, H)


class DLinear(_WindowModel):
    KERNEL = 25  # DLinear's moving-average kernel

    def __init__(self, lookback: int, horizon: int, patch: int, stride: int):
        super().__init__(lookback, horizon, patch, stride)
        self.seasonal = nn.Linear(lookback, horizon)
        self.trend = nn.Linear(lookback, horizon)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        w = self.window(x)  # (B, L)
        half = (self.KERNEL - 1) // 2
        padded = torch.cat([w[:, :1].expand(-1, half), w, w[:, -1:].expand(-1, half)], dim=1)
        trend = F.avg_pool1d(padded[:, None], self.KERNEL, stride=1)[:, 0]  # (B, L)
        return self.seasonal(w - trend) + self.trend(trend)  # (B, H)
