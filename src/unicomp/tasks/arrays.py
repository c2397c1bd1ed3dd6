"""Your own arrays and tables as a task, no code: ``--task array:PATH`` (the task ``array``
with ``--task-arg path=PATH``); the files it reads are described in ``unicomp.data.arrays``.

Inputs become a sequence of tokens, one example at a time:

* N x T x D: T tokens of D values (a sequence of vectors);
* N x T (a table's rows, a series): T tokens of one value each; ``tokens=K`` regroups each
  example's values into K tokens of T/K values (``tokens=1``: one token of every value);
* N: one token of one value; more axes, N x A x B x D: the middle ones flattened into A*B
  tokens of D values (an image N x H x W x C is H*W tokens of C values).

Inputs are standardised with statistics of the **training split only**: mean and standard
deviation per entry of an example's last axis (per column of a table, per channel D of a
sequence, pooled over its tokens; a constant entry keeps std 1), recorded in metrics.json and
in exported adapters, so served predictions use the run's own numbers.

Targets: integers, booleans or strings are classes (strings and integers keep their values as
the class names; class ids follow their sorted order); floats are regression (``problem=``
``classification`` or ``regression`` overrides the guess; more than 100 distinct integers
averaging fewer than 10 examples each are refused as ambiguous, so that prices or counts do
not become hundreds of classes unasked), one value (N) or several (N x k),
standardised with the training split's mean and std. The regression loss is the mean squared
error of the standardised targets (``test_loss``); metrics.json adds ``test_rmse`` and
``val_rmse`` in the targets' own units where there is one value per example.

Splits: the files' own (per-split arrays, a folder's train/val/test files), and where val or
test is missing it is cut from the training examples with ``split_seed`` (``val_fraction``,
``test_fraction`` of them); how, with the sizes, is recorded in metrics.json.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unicomp.data.arrays import SPLITS, ArrayFiles, Examples, read_arrays
from unicomp.errors import DataError
from unicomp.tasks.base import Batch, Codec, Scored, TaskSpec, TensorTask, describe_item, fail

PROBLEMS = ("auto", "classification", "regression")
# Integer targets are classes, unless there are more than this many distinct ones averaging
# fewer than 10 examples each (prices, counts): refused as ambiguous, problem= decides.
AMBIGUOUS_CLASSES = 100
_TINY_STD = 1e-12  # below this an entry counts as constant: std 1 (no division by ~0)


def standardised_tokens(
    x: np.ndarray, mean: np.ndarray, std: np.ndarray, tokens: tuple[int, int]
) -> torch.Tensor:
    """Examples ``x`` (N, *shape) as the model takes them: standardised in float64 (``mean``,
    ``std`` per entry of the last axis), then (N, T, D) float32 tokens. The one function the
    task and its codec share, so served inputs are encoded exactly as the run's were."""
    z = (np.asarray(x, dtype=np.float64) - mean) / std
    return torch.from_numpy(z.astype(np.float32)).reshape(len(x), *tokens)  # (N, T, D)


def _statistics(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per entry of the last axis, pooled over every other axis."""
    axes = tuple(range(a.ndim - 1))
    mean, std = a.mean(axis=axes), a.std(axis=axes)
    return mean, np.where(std < _TINY_STD, 1.0, std)


class ArrayTask(TensorTask):
    """Sequence classification or regression on the examples of ``path`` (see module doc).

    path: a .npz, .npy, .csv or .parquet file, or a folder of train/val/test files.
    target: the targets: a table's column; a .npy file beside an .npy of inputs; an .npz
        array's name (default y, Y, labels or targets).
    features: a table's input columns, comma-separated (default: every column but target).
    problem: auto (integers, booleans, strings: classification; floats: regression) |
        classification | regression.
    tokens: regroup each example's values into this many tokens (0: as in the module doc).
    val_fraction, test_fraction, split_seed: where val or test is not given, the share of
        the training examples cut for it, with this seed.
    """

    name = "array"
    default_train = {"steps": 500, "lr": 1e-3, "batch_size": 32, "eval_every": 50}

    def __init__(
        self,
        path: str,
        target: str | None = None,
        features: str | None = None,
        problem: str = "auto",
        tokens: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
    ):
        if problem not in PROBLEMS:
            raise ValueError(f"problem={problem!r}: expected one of {', '.join(PROBLEMS)}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ValueError(f"{key}={value}: expected a fraction in (0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens={tokens!r}: expected a whole number >= 0")
        self.path = str(path)
        files = read_arrays(path, target, features)
        self.sha256, self.form = files.sha256, files.form
        splits, self.split_how = self._splits(files, val_fraction, test_fraction, split_seed)
        self._check_alike(splits)
        self.columns = splits["train"].columns

        # inputs: (N, *shape) float64, shape (F,) or (T, D); statistics of train only
        self.raw_shape = tuple(splits["train"].x.shape[1:])  # one example as the file has it
        xs = {s: _example_axes(e.x.astype(np.float64)) for s, e in splits.items()}
        self.shape = tuple(xs["train"].shape[1:])
        self.mean, self.std = _statistics(xs["train"])
        values = math.prod(self.shape)
        if tokens:
            if values % tokens:
                raise DataError(
                    f"{self.path}: tokens={tokens} does not divide an example's {values} values"
                )
            self.tokens = (tokens, values // tokens)
        else:
            self.tokens = (self.shape[0], 1) if len(self.shape) == 1 else self.shape
        x = {s: standardised_tokens(a, self.mean, self.std, self.tokens) for s, a in xs.items()}

        # targets
        self.problem = self._problem(problem, splits)
        if self.problem == "classification":
            y = self._classes(splits)
            self.select_by = "accuracy"
            d_out = n_classes = len(self.classes)
        else:
            y = self._values(splits)
            self.select_by = "loss"  # regression counts no hits: the best step by val loss
            d_out, n_classes = self.target_mean.shape[0], 1
        t, d = self.tokens
        self.spec = TaskSpec(max_len=t, d_in=d, d_out=d_out, n_classes=n_classes)
        self.data = {s: Batch(x[s], y[s]) for s in SPLITS}
        sizes = ", ".join(f"{len(self.data[s])} {s}" for s in SPLITS)
        what = (
            f"{len(self.classes)} classes"
            if self.problem == "classification"
            else f"regression of {d_out} value{'s' if d_out > 1 else ''}"
        )
        self.data_source = (
            f"{self.path} ({self.form}): examples of shape {list(self.shape)} as {t} tokens of "
            f"{d} values, {what}; {sizes} ({self.split_how['how']})"
        )

    # --- splits -------------------------------------------------------------------------------
    def _splits(
        self, files: ArrayFiles, val_fraction: float, test_fraction: float, seed: int
    ) -> tuple[dict[str, Examples], dict[str, Any]]:
        given = dict(files.splits)
        source = given.pop("all", None)
        if source is not None:
            given["train"] = source
        for split, ex in given.items():
            if len(ex.x) == 0:
                raise DataError(f"{ex.where}: the {split} split is empty (no examples)")
        missing = [s for s in ("val", "test") if s not in given]
        how: dict[str, Any] = {"given": [] if source else sorted(given, key=SPLITS.index)}
        if missing:
            train = given["train"]
            n = len(train.x)
            fractions = {"val": val_fraction, "test": test_fraction}
            counts = {s: int(round(n * fractions[s])) for s in missing}
            for s, count in counts.items():
                if count < 1:
                    raise DataError(
                        f"{train.where}: {n} examples; {s}_fraction {fractions[s]} of them is "
                        f"{n * fractions[s]:.2f}: the {s} split would be empty (raise "
                        f"{s}_fraction, or give a {s} split)"
                    )
            if n - sum(counts.values()) < 1:
                raise DataError(
                    f"{train.where}: {n} examples leave none for training after the val and "
                    "test splits"
                )
            order = np.random.default_rng(seed).permutation(n)
            start = 0
            for s in ("test", "val"):  # test first: the same test examples at any val_fraction
                if s in counts:
                    given[s] = _take(train, order[start : start + counts[s]])
                    start += counts[s]
            given["train"] = _take(train, np.sort(order[start:]))
            how.update({f"{s}_fraction": fractions[s] for s in missing})
            how["split_seed"] = seed
            how["how"] = (
                f"{' and '.join(missing)} cut from {'the examples' if source else 'train'} "
                f"with split_seed {seed}"
            )
        else:
            how["how"] = "splits as given"
        how["sizes"] = {s: len(given[s].x) for s in SPLITS}
        return given, how

    def _check_alike(self, splits: dict[str, Examples]) -> None:
        train = splits["train"]
        for s in ("val", "test"):
            ex = splits[s]
            if ex.x.shape[1:] != train.x.shape[1:]:
                raise DataError(
                    f"{ex.where}: {s} examples have shape {list(ex.x.shape[1:])}, train "
                    f"examples {list(train.x.shape[1:])}"
                )
            if ex.y.shape[1:] != train.y.shape[1:]:
                raise DataError(
                    f"{ex.where}: {s} targets have shape {list(ex.y.shape[1:])}, train "
                    f"targets {list(train.y.shape[1:])}"
                )
            if ex.columns != train.columns:
                raise DataError(
                    f"{ex.where}: {s} input columns {ex.columns} differ from train's "
                    f"{train.columns}"
                )

    # --- targets ------------------------------------------------------------------------------
    def _problem(self, problem: str, splits: dict[str, Examples]) -> str:
        kinds = {e.y.dtype.kind for e in splits.values()}
        strings = bool(kinds & set("US"))
        if problem == "regression" and strings:
            raise DataError(f"{self.path}: problem=regression, but the targets are strings")
        if strings and kinds - set("US"):
            raise DataError(f"{self.path}: targets are strings in one split, numbers in another")
        if problem == "auto":
            problem = "regression" if kinds == {"f"} else "classification"
            every = np.concatenate([e.y.reshape(len(e.y), -1) for e in splits.values()])
            distinct = len(np.unique(every))
            if kinds <= set("iu") and distinct > AMBIGUOUS_CLASSES and distinct * 10 > len(every):
                raise DataError(
                    f"{self.path}: the targets are {distinct} distinct integers among "
                    f"{len(every)} examples: classes or values? say --task-arg "
                    "problem=classification or problem=regression"
                )
        if problem == "classification" and splits["train"].y.ndim != 1:
            raise DataError(
                f"{self.path}: targets of shape {list(splits['train'].y.shape)}: classes are one "
                "per example (N); for several values per example use problem=regression"
            )
        return problem

    def _classes(self, splits: dict[str, Examples]) -> dict[str, torch.Tensor]:
        every = np.concatenate([splits[s].y for s in SPLITS])
        classes = np.unique(every)
        if len(classes) < 2:
            raise DataError(
                f"{self.path}: every target is {classes[0]!r}; classification needs two "
                "classes at least"
            )
        self.classes = classes.tolist()  # the names: labels as the data has them
        return {s: torch.from_numpy(np.searchsorted(classes, splits[s].y)) for s in SPLITS}

    def _values(self, splits: dict[str, Examples]) -> dict[str, torch.Tensor]:
        ys = {s: splits[s].y.astype(np.float64) for s in SPLITS}
        self.scalar_target = ys["train"].ndim == 1
        ys = {s: y.reshape(len(y), -1) for s, y in ys.items()}  # (N, k)
        self.target_mean, self.target_std = _statistics(ys["train"])
        return {
            s: torch.from_numpy(((y - self.target_mean) / self.target_std).astype(np.float32))
            for s, y in ys.items()
        }

    # --- the contract -------------------------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.data[s]) for s in SPLITS}

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.problem == "classification":
            return super().loss(logits, y, target_mask)
        return F.mse_loss(logits.float().reshape(y.shape), y)  # standardised targets

    def correct(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> Scored:
        if self.problem == "classification":
            return super().correct(logits, y, target_mask)
        return Scored(0, 0, 0, y.shape[0])  # regression: no hits to count

    def input_form(self) -> ArrayCodec:
        regression = self.problem == "regression"
        return ArrayCodec(
            self.spec,
            raw_shape=list(self.raw_shape),
            shape=list(self.shape),
            tokens=list(self.tokens),
            mean=self.mean.tolist(),
            std=self.std.tolist(),
            classes=None if regression else self.classes,
            target_mean=self.target_mean.tolist() if regression else None,
            target_std=self.target_std.tolist() if regression else None,
            scalar_target=regression and self.scalar_target,
            columns=self.columns,
        )

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        state = self.input_form().state()  # the statistics as the adapter records them
        out: dict[str, Any] = {
            "data_sha256": self.sha256,
            "data_splits": self.split_how,
            "problem": self.problem,
            "normalisation": {
                "inputs": {
                    "from": "the train split",
                    "per": "entry of an example's last axis",
                    "mean": state["mean"],
                    "std": state["std"],
                },
            },
            "input_tokens": state["tokens"],
        }
        if self.columns:
            out["input_columns"] = self.columns
        if self.problem == "classification":
            out["classes"] = self.classes
            out["metric"] = "accuracy of the predicted class (test_accuracy, val_accuracy)"
            return out
        out["normalisation"]["targets"] = {
            "from": "the train split",
            "mean": state["target_mean"],
            "std": state["target_std"],
        }
        out["metric"] = (
            "test_loss, val_loss: mean squared error of the targets standardised with the "
            "train split's mean and std"
        )
        if len(self.target_std) == 1:
            out["metric"] += "; test_rmse, val_rmse: root mean squared error in the targets' units"
            for split in ("test", "val"):
                loss = result.get(f"{split}_loss")
                if loss is not None:
                    out[f"{split}_rmse"] = math.sqrt(loss) * float(self.target_std[0])
        return out


def _example_axes(x: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1); (N, F) and (N, T, D) as they are; (N, A, B, ..., D) -> (N, A*B*..., D)."""
    if x.ndim == 1:
        return x.reshape(len(x), 1)
    if x.ndim > 3:
        return x.reshape(len(x), -1, x.shape[-1])
    return x


def _take(ex: Examples, idx: np.ndarray) -> Examples:
    return Examples(ex.x[idx], ex.y[idx], ex.where, ex.columns)


class ArrayCodec(Codec):
    """An array task's natural input: one example as the data file holds it (a list of T
    lists of D numbers, or a table row's numbers), unstandardised; standardised here with the
    run's training statistics. Output: the class as the data names it, or the value(s)."""

    def __init__(
        self,
        spec: TaskSpec,
        raw_shape: list[int],
        shape: list[int],
        tokens: list[int],
        mean: list[float],
        std: list[float],
        classes: list[Any] | None = None,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
        scalar_target: bool = True,
        columns: list[str] | None = None,
    ):
        if not raw_shape:
            described = "a number"
        elif len(raw_shape) == 1:
            described = f"a list of {raw_shape[0]} numbers"
            if columns:
                shown = ", ".join(columns[:8]) + (", ..." if len(columns) > 8 else "")
                described += f" (columns {shown})"
        elif len(raw_shape) == 2:
            described = f"a list of {raw_shape[0]} lists of {raw_shape[1]} numbers"
        else:
            described = f"nested lists of numbers of shape {list(raw_shape)}"
        if classes is not None:
            shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
            output = f"the class: one of {shown}"
        elif scalar_target:
            output = "the predicted value"
        else:
            output = f"a list of {len(target_mean or [])} predicted values"
        # a valid input: the training mean, as one example
        example = np.broadcast_to(np.round(np.asarray(mean), 4), shape).reshape(raw_shape)
        super().__init__(
            spec,
            input=f"{described}: one example as in the data file, standardised here with the "
            "run's training statistics",
            output=output,
            example=example.tolist(),
        )
        self.described = described
        self.raw_shape, self.shape = tuple(raw_shape), tuple(shape)
        self.tokens = tuple(tokens)
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.classes, self.columns = classes, columns
        self.target_mean = None if target_mean is None else np.asarray(target_mean, np.float64)
        self.target_std = None if target_std is None else np.asarray(target_std, np.float64)
        self.scalar_target = scalar_target

    def state(self) -> dict[str, Any]:
        return {
            "raw_shape": list(self.raw_shape),
            "shape": list(self.shape),
            "tokens": list(self.tokens),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "classes": self.classes,
            "target_mean": None if self.target_mean is None else self.target_mean.tolist(),
            "target_std": None if self.target_std is None else self.target_std.tolist(),
            "scalar_target": self.scalar_target,
            "columns": self.columns,
        }

    def encode(self, items):
        rows = []
        for i, item in enumerate(items):
            if isinstance(item, str | bytes | dict):
                raise fail(i, f"expected {self.described}, got {describe_item(item)}")
            try:
                a = np.asarray(item, dtype=np.float64)
            except (TypeError, ValueError):
                raise fail(i, f"expected {self.described}, got {describe_item(item)}") from None
            if a.shape != self.raw_shape:
                raise fail(i, f"expected shape {list(self.raw_shape)}, got {list(a.shape)}")
            if not np.isfinite(a).all():
                raise fail(i, "holds NaN or infinite values")
            rows.append(a.reshape(self.shape))
        if not rows:
            return torch.zeros((0, *self.tokens)), None
        return standardised_tokens(np.stack(rows), self.mean, self.std, self.tokens), None

    def decode(self, logits):
        if self.classes is not None:
            return [self.classes[c[0]] for c in super().decode(logits)]
        values = logits.detach().double().cpu().reshape(logits.shape[0], -1).numpy()
        values = values * self.target_std + self.target_mean  # the targets' own units
        return [float(v[0]) if self.scalar_target else v.tolist() for v in values]
