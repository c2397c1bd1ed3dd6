"""A user's own arrays and tables, read into numpy arrays: ``.npz``, a pair of ``.npy`` files,
CSV and Parquet tables, or a folder holding one such file per split.

What each form holds (``read_arrays``):

* ``.npz``: inputs named ``x``, ``X`` or ``inputs`` and targets named ``y``, ``Y``, ``labels``
  or ``targets`` (or ``target``, the name given); or per split ``x_train``, ``y_train``,
  ``x_val``, ``y_val``, ``x_test``, ``y_test`` (any of the names above, ``_<split>`` added;
  ``train`` at least);
* ``.npy``: the inputs; ``target`` names the ``.npy`` file of the targets;
* ``.csv`` (a header row, then one row per example) and ``.parquet``: ``target`` names the
  target column; the other columns (or those named in ``features``) are the inputs, numbers;
* a folder: ``train.*``, ``val.*`` and ``test.*`` (``.npz``, ``.csv`` or ``.parquet``),
  ``train`` at least.

Every file is read without pickle (``allow_pickle=False``: a data file never runs code), and
its SHA-256 is kept. Anything that is not numbers where numbers are needed (Python objects,
strings, complex numbers), NaN or infinite values, lengths that disagree, empty files and
missing arrays or columns are a :class:`DataError` of one line naming the file, the array or
column and what was expected.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unicomp.data import checksum
from unicomp.errors import DataError

SPLITS = ("train", "val", "test")
INPUT_NAMES = ("x", "X", "inputs")
TARGET_NAMES = ("y", "Y", "labels", "targets")
TABLES = (".csv", ".parquet")
SPLIT_FILES = (".npz", *TABLES)  # what a folder's train.* / val.* / test.* may be


@dataclass
class Examples:
    """One split as read: ``x`` (N, ...) numbers; ``y`` (N,) or (N, k) numbers or strings."""

    x: np.ndarray
    y: np.ndarray
    where: str  # the file (and array or columns) they came from, for messages
    columns: list[str] | None = None  # a table's input columns, in order


@dataclass
class ArrayFiles:
    """What ``read_arrays`` read: the splits (``{"all": ...}`` where the files give none)
    and each file's SHA-256."""

    splits: dict[str, Examples]
    sha256: dict[str, str] = field(default_factory=dict)
    form: str = ""  # in words: "npz", "npy pair", "csv table", "folder of csv tables", ...


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def read_arrays(path: str | Path, target: str | None = None, features: Any = None) -> ArrayFiles:
    """The examples of ``path`` (a file or a folder; see the module docstring); ``target``:
    the targets' array name, ``.npy`` file or table column; ``features``: a table's input
    columns (a list or a comma-separated string; None: every column but the target)."""
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        raise DataError(f"{str(path)[:80]!r}: cannot read it ({_first_line(err)})") from None
    if not exists:
        raise DataError(f"{path} does not exist (expected a .npz, .npy, .csv or .parquet file, "
                        "or a folder of train/val/test files)")  # fmt: skip
    if path.is_dir():
        return _read_folder(path, target, features)
    files = ArrayFiles({}, {str(path): _sha(path)})
    suffix = path.suffix.lower()
    if suffix == ".npz":
        files.splits, files.form = _read_npz(path, target), "npz"
    elif suffix == ".npy":
        if not target:
            raise DataError(
                f"{path} holds inputs only: name the .npy file of its targets with "
                "--task-arg target=FILE"
            )
        y_path = Path(str(target))
        if not y_path.is_file():
            raise DataError(f"{path}: its targets file {y_path} (target) does not exist")
        files.sha256[str(y_path)] = _sha(y_path)
        x, y = _load_npy(path), _load_npy(y_path)
        files.splits = {"all": _examples(x, y, f"{path} and {y_path}", str(path), str(y_path))}
        files.form = "npy pair"
    elif suffix in TABLES:
        files.splits = {"all": _read_table(path, target, features)}
        files.form = f"{suffix[1:]} table"
    else:
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(none)'}; expected .npz, .npy (with "
            "target=FILE), .csv or .parquet, or a folder of train/val/test files"
        )
    return files


def _sha(path: Path) -> str:
    try:
        return checksum(path)
    except OSError as err:
        raise DataError(f"cannot read {path} ({_first_line(err)})") from None


def _read_folder(folder: Path, target: str | None, features: Any) -> ArrayFiles:
    found: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for child in sorted(folder.iterdir()):
        if child.is_file() and child.stem in found and child.suffix.lower() in SPLIT_FILES:
            found[child.stem].append(child)
    for split, paths in found.items():
        if len(paths) > 1:
            raise DataError(
                f"{folder}: several {split} files ({', '.join(p.name for p in paths)}); keep one"
            )
    if not found["train"]:
        raise DataError(
            f"{folder}: no train file (expected train.npz, train.csv or train.parquet, with "
            "val.* and test.* beside it or made from train)"
        )
    files = ArrayFiles({}, {})
    for split, paths in found.items():
        if not paths:
            continue
        path = paths[0]
        files.sha256[str(path)] = _sha(path)
        if path.suffix.lower() == ".npz":
            got = _read_npz(path, target)
            if "all" not in got:
                raise DataError(
                    f"{path}: a split's file holds plain x and y, not per-split arrays "
                    f"({', '.join(f'{k}' for k in got)})"
                )
            files.splits[split] = got["all"]
        else:
            files.splits[split] = _read_table(path, target, features)
    kinds = sorted({p[0].suffix.lower()[1:] for p in found.values() if p})
    files.form = f"folder of {'/'.join(kinds)} files"
    return files


# --- .npz and .npy ----------------------------------------------------------------------------
def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(_objects(path, "its array")) from None
        raise DataError(f"cannot read {path} ({_first_line(err)})") from None
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path} ({_first_line(err)})") from None


def _objects(path: Path, what: str) -> str:
    return (
        f"{path}: {what} holds Python objects (dtype object), which are not read (they would "
        "need pickle); save numbers, or strings for class labels"
    )


def _read_npz(path: Path, target: str | None) -> dict[str, Examples]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} ({_first_line(err)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is not an .npz archive (a single array: save it as .npy)")
    with archive:
        names = list(archive.files)
        arrays: dict[str, np.ndarray] = {}

        def get(name: str) -> np.ndarray:
            if name not in arrays:
                try:
                    arrays[name] = archive[name]
                except ValueError as err:
                    if "allow_pickle" in str(err):
                        raise DataError(_objects(path, f"array {name!r}")) from None
                    raise DataError(
                        f"cannot read {path}: array {name!r} ({_first_line(err)})"
                    ) from None
                except (OSError, EOFError, zipfile.BadZipFile) as err:
                    raise DataError(
                        f"cannot read {path}: array {name!r} ({_first_line(err)})"
                    ) from None
            return arrays[name]

        targets = (str(target),) if target else TARGET_NAMES
        per_split = {
            s for s in SPLITS if any(f"{n}_{s}" in names for n in (*INPUT_NAMES, *targets))
        }
        plain = [n for n in INPUT_NAMES if n in names]
        listed = ", ".join(names) or "no arrays"
        if per_split and plain:
            raise DataError(
                f"{path} holds both {plain[0]} and per-split arrays ({listed}): keep one form"
            )
        if not per_split:
            x_name = _pick(path, names, INPUT_NAMES, "inputs", listed)
            y_name = _pick(path, names, targets, "targets", listed)
            return {"all": _examples(get(x_name), get(y_name), str(path), x_name, y_name)}
        if "train" not in per_split:
            raise DataError(f"{path} has per-split arrays but no train split ({listed})")
        out = {}
        for split in SPLITS:
            if split not in per_split:
                continue
            x_name = _pick(path, names, [f"{n}_{split}" for n in INPUT_NAMES], "inputs", listed)
            y_name = _pick(path, names, [f"{n}_{split}" for n in targets], "targets", listed)
            out[split] = _examples(get(x_name), get(y_name), str(path), x_name, y_name)
        return out


def _pick(path: Path, names: list[str], wanted, what: str, listed: str) -> str:
    for name in wanted:
        if name in names:
            return name
    options = ", ".join(wanted)
    raise DataError(f"{path} has no {what} array (expected one named {options}; it holds {listed})")


def _examples(x: np.ndarray, y: np.ndarray, where: str, x_name: str, y_name: str) -> Examples:
    """Check one split's arrays: numbers as inputs, numbers or strings as targets, one target
    per input, nothing missing or infinite."""
    for name, a, numbers_only in ((x_name, x, True), (y_name, y, False)):
        kind = a.dtype.kind
        if kind == "O":
            raise DataError(_objects(Path(where), f"array {name!r}"))
        if kind in "US" and numbers_only:
            raise DataError(
                f"{where}: {name} holds strings (dtype {a.dtype}); inputs must be numbers"
            )
        if kind not in "biufUS":
            raise DataError(
                f"{where}: {name} has dtype {a.dtype}; expected numbers"
                + ("" if numbers_only else " or strings (class labels)")
            )
        if a.ndim == 0:
            raise DataError(f"{where}: {name} is a single value; expected one entry per example")
    if len(x) != len(y):
        raise DataError(
            f"{where}: {x_name} has {len(x)} examples, {y_name} has {len(y)}; expected one "
            "target per example"
        )
    if y.ndim > 2:
        raise DataError(
            f"{where}: {y_name} has shape {list(y.shape)}; expected one target per example (N) "
            "or a vector of values (N x k)"
        )
    _finite(x, where, x_name)
    _finite(y, where, y_name)
    if y.dtype.kind == "S":
        y = y.astype(str)
    return Examples(x, y, where)


def _finite(a: np.ndarray, where: str, name: str) -> None:
    if a.dtype.kind != "f" or a.size == 0:
        return
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(1)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{where}: {name} holds NaN or infinite values ({int(bad.sum())} examples; the "
            f"first at index {first}, counting from 0)"
        )


# --- tables ------------------------------------------------------------------------------------
def _read_table(path: Path, target: str | None, features: Any) -> Examples:
    columns = _csv_columns(path) if path.suffix.lower() == ".csv" else _parquet_columns(path)
    names = list(columns)
    listed = ", ".join(names)
    if not target:
        raise DataError(
            f"{path} is a table: name its target column with --task-arg target=COLUMN "
            f"(columns: {listed})"
        )
    target = str(target)
    if target not in columns:
        raise DataError(f"{path} has no column {target!r} (target); columns: {listed}")
    if features is None or features == "":
        inputs = [n for n in names if n != target]
    else:
        inputs = features if isinstance(features, list) else str(features).split(",")
        inputs = [str(n).strip() for n in inputs]
        missing = [n for n in inputs if n not in columns]
        if missing:
            raise DataError(f"{path} has no column {missing[0]!r} (features); columns: {listed}")
        if target in inputs:
            raise DataError(f"{path}: column {target!r} is the target and also in features")
    if not inputs:
        raise DataError(f"{path}: no input columns besides the target {target!r}")
    n = len(columns[target])
    if n == 0:
        raise DataError(f"{path} has no rows")
    x = np.empty((n, len(inputs)), dtype=np.float64)
    for j, name in enumerate(inputs):
        x[:, j] = [_number(path, name, i, v) for i, v in enumerate(columns[name])]
    y = _targets(path, target, columns[target])
    ex = _examples(x, y, str(path), f"columns {', '.join(inputs)}", f"column {target!r}")
    ex.columns = inputs
    return ex


def _csv_columns(path: Path) -> dict[str, list[Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path} ({_first_line(err)})") from None
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise DataError(f"{path} is empty (expected a header row, then one row per example)")
    header = [h.strip() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: column {dupes[0]!r} appears more than once in the header")
    for i, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {i} has {len(row)} values, the header {len(header)} columns"
            )
    return {name: [row[j] for row in rows[1:]] for j, name in enumerate(header)}


def _parquet_columns(path: Path) -> dict[str, list[Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed (pip install pyarrow)"
        ) from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as err:  # pyarrow's own error types
        raise DataError(f"cannot read {path} ({_first_line(err)})") from None


def _number(path: Path, column: str, i: int, value: Any) -> float:
    """One table cell as an input number; row ``i`` counts data rows from 1."""
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    text = "" if value is None else str(value).strip()
    if not text:
        raise DataError(
            f"{path}: column {column!r} is empty in row {i + 1}; inputs must be numbers"
        )
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"{path}: column {column!r} is not numeric ({text[:20]!r} in row {i + 1}); inputs "
            "must be numbers (name the input columns with --task-arg features=A,B,...)"
        ) from None


def _targets(path: Path, column: str, values: list[Any]) -> np.ndarray:
    """A target column: integers, else floats, else strings (class names)."""
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{path}: target column {column!r} is empty in row {i + 1}")
    if all(isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=bool)
    texts = [v.strip() if isinstance(v, str) else v for v in values]
    for kind in (_integer, float):
        try:
            return np.asarray([kind(v) for v in texts], dtype=int if kind is _integer else float)
        except (TypeError, ValueError, OverflowError):
            continue
    return np.asarray([str(v) for v in texts])


def _integer(value: Any) -> int:
    """An integer cell ("3", 3), never a float cut to one (3.5)."""
    if isinstance(value, bool | float | np.floating):
        raise ValueError(value)
    return int(value)
