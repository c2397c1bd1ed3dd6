"""Time-series files: the UCR/UEA classification archives (``.ts``, and the UCR 2018 ``.tsv``)
and forecasting tables (a CSV of a date column then one column per channel, as the ETT,
Weather, Electricity and Traffic files are laid out), and the copies of both that the ``aeon``
package ships inside its wheel. Readers only: each returns the file's contents as arrays or
raises a one-line :class:`DataError` naming the file, the line and what was wrong; windows,
patches and splits are the tasks' work (unicomp.tasks.timeseries).

The ``.ts`` format (sktime/aeon; timeseriesclassification.com): ``#`` comment lines, then
header lines, then ``@data`` and one case per line::

    @problemName GunPoint
    @timeStamps false
    @missing false
    @univariate true
    @equalLength true
    @seriesLength 150
    @classLabel true 1 2
    @data
    -0.647,-0.641,...,-0.639:2

A case is its dimensions separated by ``:`` (one for a univariate problem), each a
comma-separated list of values, then its class label (one of those on ``@classLabel``).
``?`` (or ``NaN``) is a missing value: an error by default (``missing="error"``), or filled
by linear interpolation within its dimension (``missing="interpolate"``; values before the
first or after the last known one take the nearest known value). Dimensions of one case
must have one length; cases may differ in length only where ``@equalLength`` is false.
Time-stamped series (``@timeStamps true``) and regression problems (``@targetLabel``) are
refused.

The UCR 2018 ``.tsv`` files: one case per line, the class label first, then the values, tab
separated; unequal lengths are padded at the end with ``NaN`` (removed here).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from unicomp.errors import DataError

MISSING = ("error", "interpolate")
_TRUE_FALSE = {"true": True, "false": False}


@dataclass
class TSArchive:
    """The cases of one ``.ts``/``.tsv`` file.

    series: one float32 array (C, T_i) per case (C channels, T_i steps);
    labels: (N,) class indices into ``classes`` (the header's order);
    missing: how many values were missing (filled by interpolation)."""

    path: Path
    problem: str
    series: list[np.ndarray]
    labels: np.ndarray
    classes: tuple[str, ...]
    missing: int = 0

    def __len__(self) -> int:
        return len(self.series)

    @property
    def channels(self) -> int:
        return int(self.series[0].shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.shape[1] for s in self.series], dtype=np.int64)


def _fail(path: Path, line: int, what: str) -> DataError:
    return DataError(f"{path}: line {line}: {what}")


def _values(text: str, path: Path, line: int, where: str, missing: str) -> tuple[np.ndarray, int]:
    """One dimension's comma-separated values -> float32 array, and how many were missing."""
    tokens = [t.strip() for t in text.split(",")]
    if tokens == [""]:
        raise _fail(path, line, f"{where} has no values")
    gaps = [i for i, t in enumerate(tokens) if t == "?" or t.lower() == "nan"]
    if gaps and missing == "error":
        raise _fail(
            path,
            line,
            f"{where}: value {gaps[0] + 1} is missing ({tokens[gaps[0]]!r}); pass "
            "--task-arg missing=interpolate to fill missing values by interpolation",
        )
    for i in gaps:
        tokens[i] = "nan"
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        bad = next(i for i, t in enumerate(tokens) if not _is_number(t))
        raise _fail(
            path, line, f"{where}: value {bad + 1} {tokens[bad]!r} is not a number"
        ) from None
    if not np.isfinite(values[~np.isnan(values)]).all():
        raise _fail(path, line, f"{where}: an infinite value")
    if gaps:
        values = interpolate(values)
        if values is None:
            raise _fail(path, line, f"{where}: every value is missing")
    return values.astype(np.float32), len(gaps)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def interpolate(values: np.ndarray) -> np.ndarray | None:
    """``values`` (T,) with NaNs filled by linear interpolation between the known values (the
    nearest known value before the first and after the last); None if none is known."""
    known = ~np.isnan(values)
    if not known.any():
        return None
    steps = np.arange(len(values))
    return np.interp(steps, steps[known], values[known])


def read_ts(path: str | Path, missing: str = "error") -> TSArchive:
    """A ``.ts`` file (module doc); one-line DataError for anything malformed."""
    path = Path(path)
    if missing not in MISSING:
        raise ValueError(f"missing={missing!r}; choices: {', '.join(MISSING)}")
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    header: dict[str, tuple[int, list[str]]] = {}
    data_line = None
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if not text.startswith("@"):
            raise _fail(
                path, number, f"expected a header line (@...) before @data, got {text[:40]!r}"
            )
        key, *words = text.split()
        key = key.lower()
        if key == "@data":
            data_line = number
            break
        header[key] = (number, words)
    if data_line is None:
        raise DataError(f"{path}: no @data line (not a .ts file?)")

    def flag(key: str, default: bool | None = None) -> bool | None:
        if key not in header:
            return default
        number, words = header[key]
        if len(words) != 1 or words[0].lower() not in _TRUE_FALSE:
            raise _fail(path, number, f"{key} must be followed by true or false")
        return _TRUE_FALSE[words[0].lower()]

    if flag("@timestamps", False):
        raise _fail(
            path,
            header["@timestamps"][0],
            "time-stamped series (@timeStamps true) are not supported",
        )
    if "@targetlabel" in header and flag("@targetlabel"):
        raise _fail(
            path,
            header["@targetlabel"][0],
            "a regression problem (@targetLabel true); expected @classLabel true",
        )
    if "@classlabel" not in header:
        raise DataError(
            f"{path}: no @classLabel line; classification needs @classLabel true and the "
            "class names"
        )
    number, words = header["@classlabel"]
    if not words or words[0].lower() != "true":
        raise _fail(path, number, "@classLabel must be true, followed by the class names")
    classes = tuple(words[1:])
    if not classes:
        raise _fail(path, number, "@classLabel true lists no class names")
    if len(set(classes)) != len(classes):
        raise _fail(path, number, "@classLabel lists a class name twice")
    univariate = flag("@univariate")
    equal = flag("@equallength")
    length = None
    if "@serieslength" in header:
        number, words = header["@serieslength"]
        if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
            raise _fail(path, number, "@seriesLength must be followed by a positive integer")
        length = int(words[0])
    dims = None
    if "@dimensions" in header:
        number, words = header["@dimensions"]
        if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
            raise _fail(path, number, "@dimensions must be followed by a positive integer")
        dims = int(words[0])
    if univariate:
        dims = dims or 1
    problem = header.get("@problemname", (0, [path.stem]))[1]
    index = {name: i for i, name in enumerate(classes)}

    series, labels, gaps = [], [], 0
    for number in range(data_line + 1, len(lines) + 1):
        text = lines[number - 1].strip()
        if not text or text.startswith("#"):
            continue
        *parts, label = text.split(":")
        label = label.strip()
        if not parts:
            raise _fail(path, number, "expected values then ':' and the class label")
        if label not in index:
            raise _fail(
                path,
                number,
                f"class label {label[:30]!r} is not one of @classLabel's "
                f"({' '.join(classes)[:60]})",
            )
        if dims is not None and len(parts) != dims:
            what = "univariate (@univariate true)" if univariate else f"{dims} dimensions"
            raise _fail(path, number, f"{len(parts)} dimensions; the header says {what}")
        if series and len(parts) != series[0].shape[0]:
            raise _fail(
                path, number, f"{len(parts)} dimensions; earlier cases have {series[0].shape[0]}"
            )
        rows = []
        for d, part in enumerate(parts):
            values, n = _values(part, path, number, f"dimension {d + 1}", missing)
            gaps += n
            rows.append(values)
        if len({len(r) for r in rows}) > 1:
            found = ", ".join(str(len(r)) for r in rows)
            raise _fail(path, number, f"dimensions of unequal length ({found}) within one case")
        steps = len(rows[0])
        if length is not None and equal is not False and steps != length:
            raise _fail(path, number, f"{steps} values per dimension; @seriesLength says {length}")
        if equal and series and steps != series[0].shape[1]:
            raise _fail(
                path,
                number,
                f"{steps} values per dimension, earlier cases {series[0].shape[1]}, but "
                "@equalLength is true",
            )
        series.append(np.stack(rows))  # (C, T)
        labels.append(index[label])
    if not series:
        raise DataError(f"{path}: no cases after @data")
    return TSArchive(
        path, problem[0] if problem else path.stem, series, np.array(labels), classes, gaps
    )


def read_ucr_tsv(path: str | Path, classes: tuple[str, ...] | None = None) -> TSArchive:
    """A UCR 2018 ``.tsv`` file (module doc). ``classes``: the class names in order (from the
    other split's file, so train and test share indices); default: this file's, sorted
    numerically where they are numbers."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    series, names = [], []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        label, *tokens = raw.strip().split("\t")
        if not tokens:
            raise _fail(path, number, "expected a class label then tab-separated values")
        values, _ = _values(",".join(tokens), path, number, "the series", "interpolate")
        known = [i for i, t in enumerate(tokens) if t.strip().lower() != "nan"]
        if known and known[-1] != len(known) - 1:
            raise _fail(
                path, number, "a missing value (NaN) inside the series; only end padding is allowed"
            )
        values = values[: len(known)]
        series.append(values[None, :])
        names.append(label.strip())
    if not series:
        raise DataError(f"{path}: no cases")
    if classes is None:
        unique = set(names)
        numeric = all(_is_number(n) for n in unique)
        classes = tuple(sorted(unique, key=float if numeric else str))
    index = {name: i for i, name in enumerate(classes)}
    for number, name in enumerate(names, start=1):
        if name not in index:
            raise DataError(
                f"{path}: case {number}: class label {name!r} is not in the training file"
            )
    labels = np.array([index[n] for n in names])
    return TSArchive(path, path.stem.rsplit("_", 1)[0], series, labels, tuple(classes))


# --- finding an archive's two files ------------------------------------------------------------
def archive_files(path: str | Path, name: str | None) -> tuple[Path, Path]:
    """The (TRAIN, TEST) files of problem ``name`` under ``path``: a ``*_TRAIN.ts``/``.tsv``
    file itself, or a folder holding ``<name>_TRAIN.ts`` (or ``<name>/<name>_TRAIN.ts``, the
    archives' layout); without ``name``, the folder's only ``*_TRAIN`` file."""
    path = Path(path)
    if path.is_file():
        stem = path.name
        for ext in (".ts", ".tsv"):
            if stem.endswith(f"_TRAIN{ext}"):
                test = path.with_name(stem.replace(f"_TRAIN{ext}", f"_TEST{ext}"))
                if not test.is_file():
                    raise DataError(f"{path}: no test file {test.name} beside it")
                return path, test
        raise DataError(f"{path}: expected a <name>_TRAIN.ts or .tsv file, or a folder of them")
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if name is None:
        found = sorted(path.glob("*_TRAIN.ts")) + sorted(path.glob("*_TRAIN.tsv"))
        if len(found) != 1:
            names = ", ".join(f.name.rsplit("_", 1)[0] for f in found[:5])
            what = f"several problems ({names})" if found else "no <name>_TRAIN.ts or .tsv file"
            raise DataError(f"{path}: {what}; pass --task-arg name=NAME")
        return archive_files(found[0], None)
    for folder in (path / name, path):
        for ext in (".ts", ".tsv"):
            train = folder / f"{name}_TRAIN{ext}"
            if train.is_file():
                return archive_files(train, None)
    raise DataError(f"{path}: no {name}_TRAIN.ts or .tsv in it or in {path / name}")


def read_archive(train: Path, test: Path, missing: str = "error") -> tuple[TSArchive, TSArchive]:
    """Both files of a problem; they must share classes and channels."""
    if train.suffix == ".tsv":
        first = read_ucr_tsv(train)
        second = read_ucr_tsv(test, first.classes)
        return first, second
    first, second = read_ts(train, missing), read_ts(test, missing)
    if first.classes != second.classes:
        raise DataError(
            f"{test}: @classLabel lists {' '.join(second.classes)[:60]}, the training file "
            f"{' '.join(first.classes)[:60]}"
        )
    if first.channels != second.channels:
        raise DataError(f"{test}: {second.channels} dimensions, the training file {first.channels}")
    return first, second


# --- what aeon ships -----------------------------------------------------------------------
AEON_INSTALL = "pip install aeon (or pip install 'unicomp[timeseries]')"


def aeon_data_dir() -> Path:
    """The folder of data files inside the installed aeon package (read as files: nothing
    of aeon's loaders runs, so nothing can reach the network)."""
    import importlib.util

    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the bundled time-series sets ship with aeon: {AEON_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def aeon_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aeon")
    except PackageNotFoundError:
        return "not installed"


def bundled_classification() -> list[str]:
    """The classification problems aeon ships (a folder with <name>_TRAIN.ts and _TEST.ts)."""
    root = aeon_data_dir()
    if not root.is_dir():
        return []
    return sorted(
        d.name
        for d in root.iterdir()
        if d.name != "UnitTest"  # aeon's own test data
        and _labelled(d / f"{d.name}_TRAIN.ts")
        and (d / f"{d.name}_TEST.ts").is_file()
    )


def _labelled(path: Path) -> bool:
    """Whether ``path`` is a .ts file of a classification problem (its header says
    ``@classLabel true``; aeon also ships regression problems)."""
    if not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.lower().split()
            if words[:1] == ["@data"]:
                return False
            if words[:2] == ["@classlabel", "true"]:
                return True
    return False


def bundled_archive(name: str) -> tuple[Path, Path]:
    """The TRAIN/TEST files of a problem aeon ships, by name; an error listing what it ships
    (and how to use a downloaded archive) for any other name."""
    names = bundled_classification()
    if name not in names:
        shipped = ", ".join(names) or "none"
        raise DataError(
            f"{name!r} is not bundled with aeon {aeon_version()} (bundled: {shipped}); download "
            "the archive and pass --task-arg path=FOLDER"
        )
    folder = aeon_data_dir() / name
    return folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"


# --- forecasting tables ----------------------------------------------------------------------
@dataclass
class SeriesTable:
    """A forecasting CSV: ``values`` (T, C) float32 in time order, the date column's texts,
    the channel names, and the step between rows in seconds (None: dates not readable)."""

    path: Path
    dates: list[str]
    columns: list[str]
    values: np.ndarray
    step_seconds: float | None = field(default=None)


def read_series_csv(path: str | Path, columns: list[str] | None = None) -> SeriesTable:
    """A CSV with a header row: the first column the time stamps (ETT's ``date``), every other
    column one channel of numbers (``columns``: keep only these, in this order). Rows are
    taken in file order (the files are sorted in time); an empty or non-numeric cell is an
    error naming its line and column."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read it as CSV: {err}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{path}: empty file; expected a header row (date, then channel names)")
    head = [cell.strip() for cell in rows[0]]
    if len(head) < 2:
        raise DataError(f"{path}: line 1: expected a date column and at least one channel")
    if len(set(head)) != len(head):
        raise DataError(f"{path}: line 1: a column name appears twice")
    names = head[1:]
    keep = list(range(len(names)))
    if columns:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise DataError(
                f"{path}: no column {unknown[0]!r}; its channels: {', '.join(names)[:200]}"
            )
        keep = [names.index(c) for c in columns]
    dates, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(head):
            raise _fail(path, number, f"{len(row)} cells; the header has {len(head)}")
        numbers = []
        for i in keep:
            cell = row[i + 1].strip()
            try:
                value = float(cell)
            except ValueError:
                raise _fail(
                    path, number, f"column {names[i]!r}: {cell[:30]!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise _fail(path, number, f"column {names[i]!r}: {cell!r} is not a finite number")
            numbers.append(value)
        dates.append(row[0].strip())
        values.append(numbers)
    if not values:
        raise DataError(f"{path}: no data rows after the header")
    return SeriesTable(
        path,
        dates,
        [names[i] for i in keep],
        np.array(values, dtype=np.float32),
        _step_seconds(dates),
    )


def _step_seconds(dates: list[str]) -> float | None:
    """The time between the first two rows, in seconds, where the dates read as ISO times."""
    if len(dates) < 2:
        return None
    try:
        a, b = (datetime.fromisoformat(d) for d in dates[:2])
    except ValueError:
        return None
    return (b - a).total_seconds()


# The seasonal period of a series sampled every so many seconds (seasonal-naive forecasts):
# a day for sub-daily data, a week for daily, a year for weekly, monthly and quarterly data.
_SEASONS = {600: 144, 900: 96, 1800: 48, 3600: 24, 86400: 7, 604800: 52}


def season_of(step_seconds: float | None) -> int:
    """The seasonal period in rows for a step between rows (1: none known)."""
    if step_seconds is None:
        return 1
    if step_seconds in _SEASONS:
        return _SEASONS[int(step_seconds)]
    days = step_seconds / 86400
    if 28 <= days <= 31:
        return 12
    if 89 <= days <= 92:
        return 4
    return 1


# aeon's forecasting series (<aeon>/datasets/data/<name>/<name>.csv: a time column, then the
# values), with the season and the lengths that suit each (look-back, horizon, patch, stride):
# short series, so a short look-back; the 70/10/20 split must leave a horizon in val and test.
@dataclass(frozen=True)
class BundledSeries:
    description: str
    season: int
    lookback: int
    horizon: int
    patch: int
    stride: int
    columns: tuple[str, ...] = ()  # the channels (default: every column after the first)


BUNDLED_SERIES: dict[str, BundledSeries] = {
    "Airline": BundledSeries("monthly airline passengers 1949-1960, 144 rows", 12, 24, 12, 4, 2),
    "Lynx": BundledSeries("yearly Canadian lynx trappings 1821-1934, 114 rows", 10, 20, 8, 4, 2),
    "ShampooSales": BundledSeries("monthly shampoo sales, 36 rows", 12, 12, 3, 3, 3),
    "Uschange": BundledSeries(
        "quarterly US changes 1970-2016, 187 rows x 5 channels",
        4,
        16,
        8,
        4,
        2,
        ("Consumption", "Income", "Production", "Savings", "Unemployment"),
    ),
    "solar": BundledSeries("half-hourly GB solar generation, 289 rows", 48, 48, 24, 8, 4),
}


def bundled_forecasting() -> list[str]:
    """The series of ``BUNDLED_SERIES`` the installed aeon ships."""
    root = aeon_data_dir()
    return [name for name in BUNDLED_SERIES if (root / name / f"{name}.csv").is_file()]


def bundled_series(name: str, columns: list[str] | None = None) -> tuple[SeriesTable, int]:
    """A forecasting series aeon ships, read as a CSV (its first column the time), and its
    season; an error naming those it ships for any other name."""
    if name not in BUNDLED_SERIES:
        raise DataError(
            f"{name!r} is not one of the forecasting series unicomp knows in aeon "
            f"({', '.join(BUNDLED_SERIES)}); for your own pass --task-arg path=FILE.csv"
        )
    path = aeon_data_dir() / name / f"{name}.csv"
    if not path.is_file():
        raise DataError(
            f"{name!r} is not bundled with aeon {aeon_version()} ({path} is missing); pass "
            "--task-arg path=FILE.csv"
        )
    series = BUNDLED_SERIES[name]
    return read_series_csv(path, columns or list(series.columns) or None), series.season
