"""Experiment trackers for the one training loop: ``--track tensorboard | wandb``.

Every evaluation step's row of curve.csv (train/val loss and accuracy, learning rate,
seconds) is also logged to the tracker, and the run's final metrics at the end. Files go into
the run folder, next to curve.csv:

* ``tensorboard``: ``RUN/tensorboard/`` (``torch.utils.tensorboard``; needs the
  ``tensorboard`` package, the ``track`` extra). View with ``tensorboard --logdir RUN``.
* ``wandb``: ``RUN/wandb/`` (Weights & Biases, where the ``wandb`` package is installed; never
  required). ``WANDB_MODE=offline`` logs without network (``wandb sync RUN/wandb/offline-*``
  uploads later); project ``$WANDB_PROJECT``, else ``unicomp``; the run is named after the
  run folder, with the resolved config. A resumed run (``--resume``) logs into a new W&B run
  of the same name, from the step it resumes at (TensorBoard: a new events file in the same
  folder, which TensorBoard reads as one run).

Not logged: a DT's returns in the environment (measured after training; in metrics.json and
``unicomp plot``'s return-against-target picture).

Metrics a task does not have (a continuous-action DT's accuracy) are not logged.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from unicomp.errors import UnicompError

TRACKERS = ("none", "tensorboard", "wandb")


def progress_bar(total: int | None, desc: str, enabled: bool = True, **kwargs: Any):
    """A tqdm bar on stderr. Where stderr is not a terminal (a log file, a pipe) it redraws at
    most every 30 s instead of every update, so a log gets a few lines, not thousands."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    interval = {} if tty else {"mininterval": 30.0, "maxinterval": 30.0}  # (monitor thread too)
    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        dynamic_ncols=tty,
        file=sys.stderr,
        **interval,
        **kwargs,
    )


def _release(text: str) -> tuple[int, ...]:
    """(0, 19, 10) for "0.19.10" or "0.19.10rc1": the leading numbers of a version."""
    import re

    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])


class Tracker:
    """Logs rows of scalars by step; ``none`` logs nothing."""

    def __init__(self, kind: str, out: Path, config: dict | None = None):
        self.kind, self._writer, self._run = kind, None, None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UnicompError(
                    "--track tensorboard needs the tensorboard package: "
                    "pip install 'unicomp[track]' (or pip install tensorboard)"
                ) from None
            self._writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise UnicompError(
                    "--track wandb needs the wandb package (pip install 'unicomp[wandb]', "
                    "wandb 0.19.10 or later); --track tensorboard needs only the track extra"
                ) from None
            if _release(wandb.__version__) < (0, 19, 10):
                raise UnicompError(
                    f"--track wandb needs wandb 0.19.10 or later (wandb.init(reinit="
                    f"'create_new')); this one is {wandb.__version__}: pip install -U wandb"
                )
            (out / "wandb").mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "unicomp"),
                name=out.name,
                dir=str(out),
                config=config,
                reinit="create_new",
            )
        elif kind != "none":
            raise UnicompError(f"--track {kind!r}: expected one of {', '.join(TRACKERS)}")

    def log(self, row: dict[str, Any], prefix: str = "") -> None:
        """Log the numbers of ``row`` at ``row['step']`` (None and non-numbers skipped)."""
        step = int(row.get("step", 0))
        scalars = {
            prefix + k: float(v)
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v)
        }  # fmt: skip
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._run is not None:
            self._run.log(scalars, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._run is not None:
            self._run.finish()
        self._writer = self._run = None
