"""The time-series campaign's tables and verdicts, read from its run folders (nothing here
trains): every FPT run (``fpt train --task ucr|forecast``) and baseline (``ts baseline``)
under one folder, grouped by data set and row, mean ± std over seeds, and one verdict per
comparison under the rules of :mod:`unicomp.reports.verdicts`.

Rows: an FPT run is named by its backbone and freeze policy ("FPT minilm-l6", "frozen random
init (minilm-l6)", "LSTM", "minilm-l6 fully trained", "FPT smollm2-135m (first 6 layers)"), a
baseline by its method. DLinear's learning rate is chosen per seed on the validation MSE
among the rates that ran; the other rows run at one setting.

Classification scores are test accuracies; the floor a row that did not learn sits at is
the test split's constant answer. Forecasting rows are compared by their skill over the
naive forecast on the same test windows, ``1 - MSE / MSE(naive)`` (a fraction: 0 is the
naive forecast, which is also the floor; 1 point is 1% of the naive forecast's MSE), and
shown with their MSE and MAE.

The budget of an FPT row is its training examples (steps x batch) as a fraction of GPT4TS's:
50 epochs of the archive's train file for classification, 10 epochs of the train windows
for forecasting (One Fits All's scripts, DAMO-DI-ML/NeurIPS2023-One-Fits-All).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from unicomp.config import load_yaml
from unicomp.errors import UnicompError
from unicomp.files import read_record
from unicomp.reports.verdicts import (
    MISSING,
    Figure,
    MissingFigure,
    about_as_good,
    above,
    budget_text,
    decide,
)
from unicomp.runs import markdown_table, mean_std

GPT4TS_EPOCHS = {"ucr": 50, "forecast": 10}
METHOD_LABELS = {
    "minirocket": "MiniRocket",
    "rocket": "ROCKET",
    "1nn-dtw": "1-NN DTW",
    "naive": "naive",
    "seasonal-naive": "seasonal naive",
    "dlinear": "DLinear",
}
# Published figures on a data set aeon ships: GPT4TS (GPT-2's first 6 layers, frozen) in One
# Fits All's full classification table (Table 25; the authors' repository shows it as
# pic/classification_result.png). Its scripts select the epoch on the test file
# (``--val_pattern TEST``), so it is a reference, not a compared row.
PUBLISHED = {"JapaneseVowels": ("GPT4TS (published)", 0.986)}
# The comparisons of every FPT row (a label "FPT <backbone>"), per task: (name, against, how):
# "about" is "about as good as" (within 5 points), "above" is "better than" beyond the margin.
# Against its frozen random init where the folder holds that control for its backbone.
COMPARISONS = {
    "ucr": [
        ("about as good as MiniRocket", "MiniRocket", "about"),
        ("better than 1-NN DTW", "1-NN DTW", "above"),
    ],
    "forecast": [
        ("better than seasonal naive", "seasonal naive", "above"),
        ("about as good as DLinear", "DLinear", "about"),
    ],
}


def random_row(fpt_row: str) -> str:
    """ "frozen random init (minilm-l6)" for "FPT minilm-l6" (and its first-N-layers form)."""
    backbone = fpt_row.removeprefix("FPT ").split(" (first ")[0]
    return f"frozen random init ({backbone})"


@dataclass
class Run:
    task: str  # ucr | forecast
    data: str
    row: str
    seed: int
    metrics: dict
    config: dict
    folder: Path

    @property
    def lr(self) -> float | None:
        train = self.config.get("train") or {}
        return train.get("lr", self.config.get("lr"))


def _row(config: dict) -> str:
    if "method" in config:
        return METHOD_LABELS.get(config["method"], config["method"])
    backbone, freeze = config["backbone"], config.get("freeze", "paper")
    if backbone.startswith("random:"):
        label = f"frozen random init ({backbone.split(':', 1)[1]})"
    elif backbone.startswith("lstm"):
        label = "LSTM"
    else:
        label = f"FPT {backbone}"
        if config.get("backbone_layers"):
            label += f" (first {config['backbone_layers']} layers)"
    if freeze == "full":
        label = label.removeprefix("FPT ") + " fully trained"
    elif freeze != "paper":
        label += f" ({freeze})"
    return label


def _data(config: dict) -> str:
    args = config.get("task_args") or {}
    if args.get("name"):
        return str(args["name"])
    return Path(str(args.get("path", "?"))).stem


def load(folder: str | Path) -> list[Run]:
    """Every finished time-series run (a folder holding config.yaml and metrics.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnicompError(f"ts report: {folder} is not a folder of runs")
    runs = []
    for metrics_file in sorted(folder.glob("*/metrics.json")):
        run_dir = metrics_file.parent
        try:  # the project's readers: one-line errors, YAML's depth and duplicate-key rules
            metrics = read_record(metrics_file)
            config = load_yaml(run_dir / "config.yaml")
        except UnicompError as err:
            raise UnicompError(f"ts report: {run_dir}: unreadable record ({err})") from None
        if config.get("task") not in GPT4TS_EPOCHS:
            continue
        seed = config.get("seed", (config.get("train") or {}).get("seed"))
        runs.append(Run(config["task"], _data(config), _row(config), int(seed), metrics,
                        config, run_dir))  # fmt: skip
    return runs


def _chosen(runs: list[Run]) -> list[Run]:
    """One run per (task, data, row, seed): where several rates ran, the best on validation."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.task, r.data, r.row, r.seed)].append(r)
    return [min(g, key=lambda r: (r.metrics.get("val_loss", 0.0), r.lr or 0.0))
            for g in groups.values()]  # fmt: skip


def _budget(run: Run) -> float | None:
    train = run.config.get("train")
    if not train:  # a baseline: fit to the end (its own budget), not counted against GPT4TS's
        return None
    sizes = run.metrics["split_sizes"]
    if run.task == "ucr":  # GPT4TS trains on the archive's whole train file
        examples = run.metrics["train_split_examples"] + sizes["val"]
    else:  # the train windows (every channel's)
        examples = sizes["train"]
    return train["steps"] * train["batch_size"] / (GPT4TS_EPOCHS[run.task] * examples)


@dataclass
class Table:
    task: str
    data: str
    rows: dict[str, list[Run]]  # row label -> chosen run per seed (sorted by seed)

    def figure(self, row: str) -> Figure:
        runs = self.rows.get(row)
        if not runs:
            raise MissingFigure(f"{self.data}: {row} not run")
        budgets = [b for b in map(_budget, runs) if b is not None]
        common = dict(
            label=row,
            budget=min(budgets) if budgets else None,
            params=runs[0].metrics.get("total_params"),
            rates=tuple(r.lr for r in runs) if runs[0].lr is not None else (),
        )
        if self.task == "ucr":
            return Figure(
                values=tuple(r.metrics["test_accuracy"] for r in runs),
                evaluations=runs[0].metrics["test_elements"],
                floor=max(r.metrics["test_constant_accuracy"] for r in runs),
                **common,
            )
        naive = self.rows.get("naive")
        if not naive:
            raise MissingFigure(f"{self.data}: the naive forecast not run (the skill's scale)")
        scale = naive[0].metrics["test_mse"]
        return Figure(values=tuple(1 - r.metrics["test_mse"] / scale for r in runs), floor=0.0,
                      **common)  # fmt: skip


def tables(runs: list[Run]) -> list[Table]:
    by: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(_chosen(runs), key=lambda r: r.seed):
        by[(r.task, r.data)][r.row].append(r)
    return [Table(task, data, dict(rows)) for (task, data), rows in sorted(by.items())]


def _pm(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean, std = mean_std(values)
    spread = "" if std is None else f" ± {std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}{spread} (n={len(values)})"


def _fpt_rows(rows) -> list[str]:
    return sorted(r for r in rows if r.startswith("FPT "))


def _row_order(rows: list[str]) -> list[str]:
    first = _fpt_rows(rows)
    controls = sorted(r for r in rows if r not in first and r not in METHOD_LABELS.values())
    return first + controls + [m for m in METHOD_LABELS.values() if m in rows]


def verdicts(table: Table, controls: set[str] = frozenset()) -> list[list[str]]:
    """[comparison, ours, verdict, reason] per FPT row and comparison of the table's task;
    ``controls``: the random-init rows the folder holds for any data set (their comparison is
    "missing" where this data set lacks one)."""
    out = []
    for row in _fpt_rows(table.rows):
        comparisons = list(COMPARISONS[table.task])
        if random_row(row) in controls:
            comparisons.append(("better than its frozen random init", random_row(row), "above"))
        for name, against, how in comparisons:
            name = f"{row} {name}"
            try:
                a, b = table.figure(row), table.figure(against)
            except MissingFigure as err:
                out.append([name, "-", MISSING, str(err)])
                continue
            if how == "about":
                test = (f"within 5 points of {against}", about_as_good(a, b))
            else:
                test = (f"above {against} beyond the margin", above(a, b))
            v = decide([test], compared=[a, b], baselines=[b])
            ours = f"{a.text()} against {b.text()} [{budget_text(a)}]"
            out.append([name, ours, v.verdict, v.reason])
    return out


def classification_markdown(all_tables: list[Table]) -> str:
    tabs = [t for t in all_tables if t.task == "ucr"]
    rows = _row_order(sorted({r for t in tabs for r in t.rows}))
    body = []
    for t in tabs:
        first = next(iter(t.rows.values()))[0].metrics
        cells = [
            t.data,
            str(first["test_elements"]),
            f"{100 * first['test_constant_accuracy']:.1f}",
        ]
        for row in rows:
            runs = t.rows.get(row)
            cells.append(_pm([r.metrics["test_accuracy"] for r in runs], 100) if runs else "-")
        body.append(cells)
        cells.append(f"{100 * PUBLISHED[t.data][1]:.1f}" if t.data in PUBLISHED else "-")
    head = ["data set", "test cases", "constant answer"] + rows + ["GPT4TS (published)"]
    return markdown_table(head, body)


def forecasting_markdown(all_tables: list[Table]) -> str:
    tabs = [t for t in all_tables if t.task == "forecast"]
    rows = _row_order(sorted({r for t in tabs for r in t.rows}))
    body = []
    for t in tabs:
        for row in rows:
            runs = t.rows.get(row)
            if not runs:
                continue
            mse = _pm([r.metrics["test_mse"] for r in runs], digits=3)
            mae = _pm([r.metrics["test_mae"] for r in runs], digits=3)
            lrs = "/".join(f"{r.lr:g}" for r in runs) if runs[0].lr is not None else "-"
            body.append([t.data, row, mse, mae, lrs])
    return markdown_table(["series", "row", "test MSE", "test MAE", "lr per seed"], body)


def verdicts_markdown(all_tables: list[Table]) -> str:
    controls = {r for t in all_tables for r in t.rows if r.startswith("frozen random init")}
    body = []
    for t in all_tables:
        for name, ours, verdict, reason in verdicts(t, controls):
            body.append([t.data, name, ours, f"**{verdict}**", reason])
    return markdown_table(["data", "comparison", "ours [FPT's budget]", "verdict", "reason"], body)


def render(folder: str | Path, part: str) -> str:
    """One generated block of docs/timeseries.md: ``classification``, ``forecasting`` or
    ``verdicts`` from the runs under ``folder``."""
    all_tables = tables(load(folder))
    if not all_tables:
        raise UnicompError(f"ts report: no finished time-series runs under {folder}")
    parts = {"classification": classification_markdown, "forecasting": forecasting_markdown,
             "verdicts": verdicts_markdown}  # fmt: skip
    if part not in parts:
        raise UnicompError(f"ts report: unknown part {part!r}; choices: {', '.join(parts)}")
    return parts[part](all_tables)
