"""Time series through the FPT: classification of UCR/UEA archives (``ucr``) and forecasting of
a look-back window's next steps (``forecast``), as "One Fits All" (Zhou et al., NeurIPS 2023,
arXiv 2302.11939; GPT4TS) runs a frozen GPT-2 on them. File readers: unicomp.data.timeseries.

Patching (GPT4TS sec. 3.1, after PatchTST, Nie et al. 2023): the series is extended at its end
by ``stride`` copies of its last step (PatchTST's ``padding_patch="end"``), then cut into
patches of ``patch`` steps every ``stride`` steps; each patch is one token of ``patch x C``
values (step-major: the C channels of step 1, then of step 2, ...). A series of T steps is
``n_patches(T) = (max(T + stride, patch) - patch) // stride + 1`` tokens.

Classification (``ucr``): series -> class. Each series is z-normalised per channel over its
own steps (``normalize="instance"``, the UCR convention; ``"none"`` keeps the values). Series
of unequal length (allowed by the ``.ts`` format) are patched each at its own length and padded
with masked tokens to the longest. The archives have a train and a test file only: the
validation split is ``val_fraction`` of each class of the train file, drawn with
``split_seed`` (a class's last example always trains). Output: the class index, in the order
of the file's ``@classLabel`` line.

Forecasting (``forecast``): a look-back window of ``lookback`` steps -> the next ``horizon``
steps. Channels are independent examples (GPT4TS and PatchTST: one model for every channel;
the example ``i`` is channel ``i // windows``, window ``i % windows``). The split is
chronological as GPT4TS's data loaders cut it (its Long-term_Forecasting/data_provider/
data_loader.py): ETT hourly files 12/4/4 months (train rows 0-8639, val 8640-11519, test
11520-14399; the last 4 months are not used), ETT 15-minute files the same months (x4 rows),
any other series 70/10/20 % of its rows; a val or test window's look-back reaches back into
the split before it. Values are standardised per channel with the train rows' mean and std
(``scale=True``, as GPT4TS's StandardScaler), and the reported MSE and MAE are in those units,
as the papers report them. Each input window is then normalised by its own mean and std
(RevIN-style instance normalisation, Kim et al. 2022, as GPT4TS: std = sqrt(var + 1e-5)),
and the model's output is de-normalised with them before the loss: the model predicts in the
window's normalised units, the loss and metrics are in the data's.

Departures from GPT4TS: its head flattens every patch token into one linear layer; the FPT
reads one position (``readout``: the last patch token, or the mean) into a linear head. The
``forecast`` split's val windows may be thinned (``val_stride``); the test split is always
every window.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unicomp.data import timeseries as ts
from unicomp.errors import DataError
from unicomp.tasks.base import Batch, Scored, TaskSpec, TensorTask, epoch_indices

REVIN_EPS = 1e-5  # GPT4TS and RevIN: std = sqrt(var + eps)
NORMALIZE = ("instance", "none")
SPLITS = ("auto", "ett-hour", "ett-minute", "70/10/20")


# --- patching and instance normalisation -------------------------------------------------------
def n_patches(steps: int, patch: int, stride: int) -> int:
    """Tokens of a series of ``steps`` steps (module doc)."""
    return (max(steps + stride, patch) - patch) // stride + 1


def patch_tokens(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """x: (B, T, C) -> tokens (B, n_patches(T), patch * C): the end padded with ``stride``
    copies of the last step (and more where T + stride < patch), then cut every ``stride``
    steps into windows of ``patch`` steps, each flattened step-major (as GPT4TS's
    ``b m n p -> b n (p m)``)."""
    b, t, c = x.shape
    extra = max(t + stride, patch) - t
    x = torch.cat([x, x[:, -1:].expand(b, extra, c)], dim=1)  # (B, T + extra, C)
    windows = x.unfold(1, patch, stride)  # (B, n, C, patch)
    return windows.transpose(2, 3).reshape(b, windows.shape[1], patch * c)  # (B, n, patch*C)


def unpatch(tokens: torch.Tensor, patch: int, stride: int, steps: int) -> torch.Tensor:
    """The inverse of ``patch_tokens`` for one channel: tokens (B, n, patch) -> the first
    ``steps`` steps (B, steps); needs ``stride <= patch`` (else steps fall between patches)."""
    if stride > patch:
        raise ValueError(f"stride {stride} > patch {patch}: the patches skip steps")
    first = tokens[:, 0]  # (B, patch)
    rest = tokens[:, 1:, patch - stride :].reshape(tokens.shape[0], -1)  # (B, (n-1)*stride)
    return torch.cat([first, rest], dim=1)[:, :steps]


def revin(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (B, T) -> (normalised x, mean (B,), std (B,)): each row by its own statistics."""
    mean = x.mean(1)
    std = torch.sqrt(x.var(1, unbiased=False) + REVIN_EPS)
    return (x - mean[:, None]) / std[:, None], mean, std


def zscore(series: np.ndarray) -> np.ndarray:
    """(C, T) -> each channel minus its mean over T, divided by its std (1 where it is 0)."""
    mean = series.mean(axis=1, keepdims=True)
    std = series.std(axis=1, keepdims=True)
    return (series - mean) / np.where(std > 0, std, 1.0)


def classification_tokens(
    series: list[np.ndarray], patch: int, stride: int, normalize: str, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Series [(C, T_i)] -> tokens (N, width, patch*C) and mask (N, width) (None where every
    series has the same length and fills ``width``); ``width``: tokens per row (default: the
    longest series')."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r}; choices: {', '.join(NORMALIZE)}")
    rows = [zscore(s) if normalize == "instance" else s for s in series]
    counts = [n_patches(s.shape[1], patch, stride) for s in rows]
    width = width or max(counts)
    if len({s.shape[1] for s in rows}) == 1 and counts[0] == width:  # one tensor op for all
        x = torch.from_numpy(np.stack(rows).astype(np.float32)).transpose(1, 2)  # (N, T, C)
        return patch_tokens(x, patch, stride), None
    c = rows[0].shape[0]
    tokens = torch.zeros(len(rows), width, patch * c)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (s, n) in enumerate(zip(rows, counts, strict=True)):
        x = torch.from_numpy(s.astype(np.float32)).T[None]  # (1, T_i, C)
        tokens[i, :n] = patch_tokens(x, patch, stride)[0]
        mask[i, :n] = 1
    return tokens, mask


# --- classification ------------------------------------------------------------------------------
def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: ``fraction`` of each class (rounded) to val, drawn with ``seed``;
    a class's last example always stays in train."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == label).tolist()
        rng.shuffle(idx)
        k = min(int(len(idx) * fraction + 0.5), len(idx) - 1)
        val += idx[:k]
        train += idx[k:]
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


class UCRClassification(TensorTask):
    """A UCR/UEA classification problem: series -> class (module doc).

    Task arguments: name (a problem aeon ships, e.g. GunPoint; or the problem's name inside
    ``path``), path (a folder of <name>_TRAIN.ts/_TEST.ts files, or the _TRAIN file itself;
    .tsv too), patch (8) and stride (4) in steps, normalize (instance | none), missing
    (error | interpolate), val_fraction (0.2) and split_seed (0).
    """

    name = "ucr"
    # Our defaults (GPT4TS trains 50 epochs with RAdam at lr 5e-4 or 1e-3 per set).
    default_train = {
        "steps": 2000,
        "lr": 1e-3,
        "batch_size": 16,
        "eval_every": 100,
        "eval_batch_size": 64,
    }

    def __init__(
        self,
        name: str | None = None,
        path: str | None = None,
        patch: int = 8,
        stride: int = 4,
        normalize: str = "instance",
        missing: str = "error",
        val_fraction: float = 0.2,
        split_seed: int = 0,
    ):
        if patch < 1 or stride < 1:
            raise ValueError("patch and stride must be at least 1")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize={normalize!r}; choices: {', '.join(NORMALIZE)}")
        if missing not in ts.MISSING:
            raise ValueError(f"missing={missing!r}; choices: {', '.join(ts.MISSING)}")
        if not 0 < val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        if path:
            train_file, test_file = ts.archive_files(Path(path).expanduser(), name)
            where = str(train_file.parent)
        elif name:
            train_file, test_file = ts.bundled_archive(name)
            where = f"bundled with aeon {ts.aeon_version()}"
        else:
            raise ValueError(
                "name a problem: --task-arg name=GunPoint (one aeon ships) or --task-arg "
                "path=FOLDER (a folder of <name>_TRAIN.ts and <name>_TEST.ts)"
            )
        train, test = ts.read_archive(train_file, test_file, missing)
        self.patch, self.stride, self.normalize = patch, stride, normalize
        self.classes = train.classes
        self.channels = train.channels
        tr, va = stratified_split(train.labels, val_fraction, split_seed)
        if not len(va):
            raise DataError(
                f"{train_file}: too few cases ({len(train)}) to draw a validation split "
                f"(val_fraction={val_fraction})"
            )
        longest = int(max(train.lengths.max(), test.lengths.max()))
        width = n_patches(longest, patch, stride)
        self.series = {
            "train": [train.series[i] for i in tr],
            "val": [train.series[i] for i in va],
            "test": test.series,
        }
        labels = {"train": train.labels[tr], "val": train.labels[va], "test": test.labels}
        self.data = {}
        for split, series in self.series.items():
            x, mask = classification_tokens(series, patch, stride, normalize, width)
            self.data[split] = Batch(x, torch.from_numpy(labels[split]).long(), mask)
        n = len(self.classes)
        self.spec = TaskSpec(max_len=width, d_in=patch * self.channels, d_out=n, n_classes=n)
        lengths = np.concatenate([train.lengths, test.lengths])
        span = (
            f"{lengths.min()}" if lengths.min() == lengths.max() else f"{lengths.min()}-{longest}"
        )
        filled = train.missing + test.missing
        self.data_source = (
            f"{train.problem} ({where}): {train_file.name} ({len(train)} cases) and "
            f"{test_file.name} ({len(test)}); val = {val_fraction:g} of each class of the train "
            f"file (split_seed={split_seed}): train {len(tr)}, val {len(va)}, test {len(test)}; "
            f"{self.channels} channel(s), {span} steps, {n} classes; patch {patch} stride "
            f"{stride} -> up to {width} tokens; normalize={normalize}"
            + (f"; {filled} missing values interpolated" if filled else "")
        )

    @staticmethod
    def run_label(args: dict) -> str:
        """What default run folders call a run of these arguments (``ucr-GunPoint``)."""
        label = args.get("name") or Path(str(args.get("path") or "")).name.split("_TRAIN")[0]
        return f"ucr-{label}" if label else "ucr"


# --- forecasting --------------------------------------------------------------------------------
# GPT4TS's settings for the long-term benchmark (scripts/ETTh1.sh: seq_len 336, patch 16,
# stride 8; horizons 96, 192, 336, 720): the defaults for a CSV of the user's.
CSV_DEFAULTS = {"lookback": 336, "horizon": 96, "patch": 16, "stride": 8}
ETT_MONTH_ROWS = 30 * 24  # GPT4TS: a month of hourly rows


def forecast_settings(args: dict) -> dict[str, int]:
    """The look-back, horizon, patch and stride a ``forecast`` task of ``args`` uses: those
    given, else the bundled series' own (``BUNDLED_SERIES``), else GPT4TS's (CSV_DEFAULTS).
    A function of the arguments alone, so that the serving codec knows them too."""
    name = args.get("name")
    base = dict(CSV_DEFAULTS)
    if name and not args.get("path"):
        series = ts.BUNDLED_SERIES.get(name)
        if series is not None:
            base = {k: getattr(series, k) for k in base}
    return {k: int(args[k]) if args.get(k) is not None else v for k, v in base.items()}


def chronological_borders(
    rows: int, lookback: int, split: str
) -> tuple[dict[str, tuple[int, int]], str]:
    """{split: (first row, end row)} of each split's windows' rows (a val/test split starts
    ``lookback`` rows early, so its first window's look-back lies in the split before), and
    a description. ``split``: ett-hour, ett-minute or 70/10/20 (module doc)."""
    if split in ("ett-hour", "ett-minute"):
        month = ETT_MONTH_ROWS * (4 if split == "ett-minute" else 1)
        train_end, val_end, test_end = 12 * month, 16 * month, 20 * month
        if rows < test_end:
            raise DataError(
                f"split={split} needs {test_end} rows (12/4/4 months), the series has {rows}; "
                "use --task-arg split=70/10/20"
            )
        what = (
            f"{split}: 12/4/4 months (rows 0-{train_end - 1}, {train_end}-{val_end - 1}, "
            f"{val_end}-{test_end - 1}; rows from {test_end} unused), as GPT4TS"
        )
    else:
        n_train, n_test = int(rows * 0.7), int(rows * 0.2)
        train_end, val_end, test_end = n_train, rows - n_test, rows
        what = (
            f"70/10/20 % of {rows} rows (rows 0-{train_end - 1}, {train_end}-{val_end - 1}, "
            f"{val_end}-{rows - 1}), as GPT4TS"
        )
    borders = {
        "train": (0, train_end),
        "val": (train_end - lookback, val_end),
        "test": (val_end - lookback, test_end),
    }
    return borders, what


class Forecast(TensorTask):
    """Forecast the next ``horizon`` steps from ``lookback`` steps (module doc).

    Task arguments: path (a CSV: a date column, then channels) or name (a series aeon ships:
    see ``unicomp ts list``), columns (comma-separated channels to use; default all),
    lookback, horizon, patch, stride (default: the bundled series' own, or GPT4TS's 336, 96,
    16, 8), split (auto | ett-hour | ett-minute | 70/10/20; auto: ett-hour for files named
    ETTh*, ett-minute for ETTm*, else 70/10/20), scale (standardise with the train rows'
    statistics) and val_stride (every k-th validation window; the test split is always whole).

    Batches: x (B, n_patches(lookback), patch) tokens of the RevIN-normalised window; y
    (B, horizon + 2): the horizon's values (scaled units), then the window's mean and std,
    which the loss and metrics de-normalise the model's output with.
    """

    name = "forecast"
    select_by = "loss"
    # Our defaults (GPT4TS: 10 epochs, batch 256, lr 1e-4 with cosine decay, on a GPU).
    default_train = {
        "steps": 2000,
        "lr": 1e-3,
        "batch_size": 64,
        "eval_every": 200,
        "eval_batch_size": 256,
    }

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        columns: str | None = None,
        lookback: int | None = None,
        horizon: int | None = None,
        patch: int | None = None,
        stride: int | None = None,
        split: str = "auto",
        scale: bool = True,
        val_stride: int = 1,
    ):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choices: {', '.join(SPLITS)}")
        if val_stride < 1:
            raise ValueError("val_stride must be at least 1")
        settings = forecast_settings(
            {"name": name, "path": path, "lookback": lookback, "horizon": horizon,
             "patch": patch, "stride": stride}
        )  # fmt: skip
        if min(settings.values()) < 1:
            raise ValueError(f"lookback, horizon, patch and stride must be at least 1: {settings}")
        self.lookback, self.horizon = settings["lookback"], settings["horizon"]
        self.patch, self.stride = settings["patch"], settings["stride"]
        wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        if path:
            table = ts.read_series_csv(Path(path).expanduser(), wanted)
            where, season = str(table.path), ts.season_of(table.step_seconds)
        elif name:
            table, season = ts.bundled_series(name, wanted)
            where = f"{name}, bundled with aeon {ts.aeon_version()}"
        else:
            raise ValueError(
                "name a series: --task-arg path=FILE.csv (a date column, then channels) or "
                "--task-arg name=NAME (one aeon ships: unicomp ts list)"
            )
        self.season, self.columns = season, table.columns
        if split == "auto":
            stem = table.path.stem
            split = (
                "ett-hour" if stem.startswith("ETTh") else
                "ett-minute" if stem.startswith("ETTm") else "70/10/20"
            )  # fmt: skip
        values = table.values  # (T, C)
        borders, split_text = chronological_borders(len(values), self.lookback, split)
        train_rows = values[: borders["train"][1]]
        if scale:
            mean, std = train_rows.mean(0), train_rows.std(0)
            values = (values - mean) / np.where(std > 0, std, 1.0)
        self.values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        span = self.lookback + self.horizon
        self.windows: dict[str, tuple[int, int, int]] = {}  # split: (first row, count, step)
        for part, (start, end) in borders.items():
            count = end - start - span + 1
            if count < 1:
                raise DataError(
                    f"{where}: the {part} split has {end - max(start, 0)} rows, fewer than "
                    f"lookback + horizon = {self.lookback} + {self.horizon}; pass a smaller "
                    "--task-arg lookback or horizon"
                )
            if start < 0:
                raise DataError(f"{where}: lookback {self.lookback} reaches before the first row")
            step = val_stride if part == "val" else 1
            self.windows[part] = (start, -(-count // step), step)
        self.data = {part: WindowSplit(self, part) for part in ("val", "test")}  # type: ignore[misc]
        n_tokens = n_patches(self.lookback, self.patch, self.stride)
        self.spec = TaskSpec(max_len=n_tokens, d_in=self.patch, d_out=self.horizon, n_classes=1)
        c = len(self.columns)
        self.data_source = (
            f"{where}: {len(values)} rows x {c} channel(s) ({', '.join(self.columns)[:80]}), "
            f"channels as independent examples; split {split_text}; "
            + ("standardised with the train rows' mean and std; " if scale else "")
            + f"lookback {self.lookback} -> horizon {self.horizon}, patch {self.patch} stride "
            f"{self.stride} -> {n_tokens} tokens; RevIN per window; windows (x{c} channels): "
            + ", ".join(f"{p} {n}" + (f" (every {s}th)" if s > 1 else "")
                        for p, (_, n, s) in self.windows.items())
            + f"; season {season}"
        )  # fmt: skip

    @staticmethod
    def run_label(args: dict) -> str:
        label = args.get("name") or Path(str(args.get("path") or "")).stem
        horizon = forecast_settings(args)["horizon"]
        return f"forecast-{label}-h{horizon}" if label else "forecast"

    # --- examples -------------------------------------------------------------------------
    def examples(self, part: str) -> int:
        """Examples in split ``part``: windows x channels."""
        return self.windows[part][1] * self.values.shape[1]

    def split_sizes(self) -> dict[str, int]:
        return {part: self.examples(part) for part in ("train", "val", "test")}

    def raw(self, part: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``idx`` of split ``part`` as (windows (B, lookback), targets (B, horizon)),
        in scaled units."""
        first, count, step = self.windows[part]
        channel, window = idx // count, idx % count
        start = first + window * step  # (B,)
        rows = start[:, None] + torch.arange(self.lookback + self.horizon)  # (B, L + H)
        series = self.values[rows, channel[:, None]]  # (B, L + H)
        return series[:, : self.lookback], series[:, self.lookback :]

    def make_batch(self, window: torch.Tensor, target: torch.Tensor) -> Batch:
        """Windows (B, L) and targets (B, H) -> the model's Batch (class doc)."""
        normed, mean, std = revin(window)
        x = patch_tokens(normed[:, :, None], self.patch, self.stride)  # (B, n, patch)
        y = torch.cat([target, mean[:, None], std[:, None]], dim=1)  # (B, H + 2)
        return Batch(x, y)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        idx = epoch_indices(self.examples("train"), step, batch_size, seed)
        return self.make_batch(*self.raw("train", idx))

    def train_indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        return epoch_indices(self.examples("train"), step, batch_size, seed)

    # --- metric -------------------------------------------------------------------------------
    def forecast(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's output (B, H) in normalised units -> the forecast in scaled units."""
        h = self.horizon
        return out.float() * y[:, h + 1 : h + 2] + y[:, h : h + 1]

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE of the de-normalised forecast against the horizon's values (scaled units)."""
        return F.mse_loss(self.forecast(logits, y), y[:, : self.horizon].float())

    def correct(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> Scored:
        return Scored(0, 0, 0, y.shape[0])  # a regression: no accuracy (select_by="loss")

    @torch.inference_mode()
    def test_metrics(self, model: nn.Module, batch_size: int = 256) -> dict[str, float]:
        """MSE and MAE over every test window and channel (scaled units), with ``model``
        where it is; the numbers the forecasting papers report."""
        held = [*model.parameters(), *model.buffers()]  # (the naive forecasts hold none)
        device = held[0].device if held else torch.device("cpu")
        was_training = model.training
        model.eval()
        split = self.data["test"]
        se = ae = 0.0
        for i in range(0, len(split), batch_size):
            chunk = split[i : i + batch_size].to(device)
            err = self.forecast(model(chunk.x, chunk.mask), chunk.y) - chunk.y[:, : self.horizon]
            se += float(err.pow(2).sum())
            ae += float(err.abs().sum())
        model.train(was_training)
        n = len(split) * self.horizon
        return {"test_mse": se / n, "test_mae": ae / n}


class WindowSplit:
    """A forecasting split's examples, built when indexed (the test split of a large table
    is more windows than fit in memory at once). Quacks like a ``Batch`` where the loop needs
    it: ``len`` and indexing (a slice, an index tensor) return Batches."""

    def __init__(self, task: Forecast, part: str):
        self.task, self.part = task, part

    def __len__(self) -> int:
        return self.task.examples(self.part)

    def __getitem__(self, idx) -> Batch:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        elif isinstance(idx, int):
            idx = torch.tensor([idx])
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return self.task.make_batch(*self.task.raw(self.part, idx))

    @property
    def y(self) -> torch.Tensor:
        # Targets are continuous: the loop's constant-answer accuracy does not apply (it
        # returns None for float targets); the windows are not built for it.
        return torch.empty(0)
