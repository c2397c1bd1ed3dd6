"""The FPT paper's comparisons as one command: ``unicomp fpt ablate --suite NAME``.

A suite (``configs/suites/<name>.yaml``) is a grid of rows (backbone x freeze policy x
settings) x seeds on one task, under a named protocol:

- ``paper``: the paper's recipe, one fixed learning rate and a fixed budget;
- ``sweep``: a small learning-rate grid per cell, early stopping on validation, the rate with
  the best validation score chosen per row and seed, then its test score (as Rothermel et al.
  2021 did, arXiv 2107.12460).

Each cell is an ordinary FPT run folder (``unicomp fpt train``), run in a child process by
:mod:`unicomp.tools.jobs`, two at a time by default. A finished cell is skipped on a re-run (after
checking its config.yaml says what the suite asks); a killed one resumes from its checkpoint.
``prepare`` runs (e.g. a transformer trained on bit memory, used frozen by another row as
``run:@name``) come first, one per seed, in a folder shared by every suite under the same
``--out``.

Writes ``<out>/<suite>/results.md`` (one table per suite table: mean ± std over seeds),
``results.json`` (every cell) and per table a learning-curve plot and a bar chart.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unicomp.config import FPTConfig, check_config, from_dict, load_yaml
from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json, atomic_write_text
from unicomp.runs import markdown_table, mean_std
from unicomp.tools.jobs import Cell, config_changes, run_cells

SUITES_DIR = Path(__file__).resolve().parents[3] / "configs" / "suites"
PROTOCOLS = ("paper", "sweep")
# Keys a row (or a prepare entry) may set; everything else in FPTConfig comes from the suite.
ROW_KEYS = {
    "label", "paper", "backbone", "freeze", "backbone_layers", "readout", "backbone_dropout",
    "task", "task_args", "train", "lrs",
}  # fmt: skip
SUITE_KEYS = {"name", "description", "task", "task_args", "seeds", "protocol", "train", "sweep",
              "prepare", "tables"}  # fmt: skip


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "row"


def find_suite(name: str) -> Path:
    """A suite file: a path, or a name in configs/suites/."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SUITES_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SUITES_DIR.glob("*.yaml")) if SUITES_DIR.is_dir() else []
    raise UnicompError(
        f"unknown suite {name!r}: not a file, and not one of {', '.join(names) or '(none)'}"
    )


@dataclass
class Suite:
    name: str
    path: Path
    protocol: str
    seeds: list[int]
    out: Path
    root: Path
    tables: list[dict]
    prepare: list[Cell]
    cells: list[Cell]
    description: str = ""
    asked: str = ""  # the --suite argument: a shipped name or a file


def _need_keys(data: dict, allowed: set, where: str) -> None:
    unknown = sorted(map(str, set(data) - allowed))
    if unknown:
        raise UnicompError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(allowed))}"
        )


def _cell_config(base: dict, row: dict, seed: int, where: str, extra_train: dict) -> FPTConfig:
    """FPTConfig for one cell: field defaults < task defaults < suite < row < protocol."""
    from unicomp.experiments.common import task_defaults

    task = row.get("task", base.get("task"))
    if not isinstance(task, str):
        raise UnicompError(f"{where}: task must be a task name, got {task!r}")
    for part, value in (("train", row.get("train")), ("task_args", row.get("task_args"))):
        if value is not None and not isinstance(value, dict):
            raise UnicompError(f"{where}: {part} must be a mapping, got {value!r}")
    data: dict[str, Any] = {
        k: v for k, v in row.items() if k not in ("label", "paper", "train", "lrs", "task_args")
    }
    data["task"] = task
    data["task_args"] = {**(base.get("task_args") or {}), **(row.get("task_args") or {})}
    data["train"] = {
        **task_defaults(task),
        **(base.get("train") or {}),
        **(row.get("train") or {}),
        **extra_train,
        "seed": seed,
        "progress": False,
    }
    return check_config(from_dict(FPTConfig, data, where), where)


def _lr_text(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def load_suite(
    name: str,
    out: Path,
    seeds: list[int] | None = None,
    protocol: str | None = None,
    steps: int | None = None,
) -> Suite:
    """Read and check a suite file; build every cell's config (nothing is run or written)."""
    path = find_suite(name)
    data = load_yaml(path)
    where = f"suite {path}"
    _need_keys(data, SUITE_KEYS, where)
    suite_name = str(data.get("name") or path.stem)
    protocol = protocol or data.get("protocol", "paper")
    if protocol not in PROTOCOLS:
        raise UnicompError(f"{where}: protocol must be one of {', '.join(PROTOCOLS)}: {protocol!r}")
    seeds = seeds if seeds is not None else data.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise UnicompError(f"{where}: seeds must be a list of integers, got {seeds!r}")
    tables = data.get("tables")
    if not (isinstance(tables, list) and tables):
        raise UnicompError(f"{where}: tables must be a non-empty list of {{title, rows}}")
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise UnicompError(f"{where}: sweep must be a mapping {{lrs, patience}}")
    _need_keys(sweep, {"lrs", "patience"}, f"{where}: sweep")
    base = {k: data.get(k) for k in ("task", "task_args", "train")}
    base["train"] = dict(base["train"] or {})
    if steps is not None:
        base["train"]["steps"] = steps
    root = out
    suite_out = out / suite_name

    prepare: dict[str, list[Cell]] = {}
    for pname, entry in (data.get("prepare") or {}).items():
        pwhere = f"{where}: prepare {pname}"
        if not isinstance(entry, dict):
            raise UnicompError(f"{pwhere}: expected a mapping")
        _need_keys(entry, (ROW_KEYS - {"label", "paper", "lrs"}) | {"seed"}, pwhere)
        entry = {**entry, "train": {**(entry.get("train") or {})}}
        if steps is not None:
            entry["train"]["steps"] = steps
        # seed: N trains one run, used by every seed of the rows (cheaper; stated in results);
        # without it each seed gets its own pretraining run.
        one_seed = entry.pop("seed", None)
        if one_seed is not None and not isinstance(one_seed, int):
            raise UnicompError(f"{pwhere}: seed must be an integer, got {one_seed!r}")
        cells = []
        for seed in seeds if one_seed is None else [one_seed]:
            key = f"_prepare/{slug(str(pname))}/s{seed}"
            cfg = _cell_config({"task": base["task"]}, entry, seed, pwhere, {})
            cfg.out = str(root / key)
            cells.append(Cell(key, "", "prepare", seed, cfg))
        prepare[str(pname)] = cells

    cells: list[Cell] = []
    seen: set[str] = set()
    for t_index, table in enumerate(tables):
        twhere = f"{where}: table {t_index + 1}"
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise UnicompError(f"{twhere}: expected {{title, rows: [...]}}")
        title = str(table.get("title") or f"table {t_index + 1}")
        for r_index, row in enumerate(table["rows"]):
            rwhere = f"{twhere}, row {r_index + 1}"
            if not isinstance(row, dict):
                raise UnicompError(f"{rwhere}: expected a mapping")
            _need_keys(row, ROW_KEYS, rwhere)
            label = str(row.get("label") or f"{row.get('backbone')} {row.get('freeze')}")
            rslug = slug(label)
            if rslug in seen:
                continue  # the same row in two tables runs once
            seen.add(rslug)
            lrs = row.get("lrs", sweep.get("lrs", [1e-4, 3e-4, 1e-3, 3e-3]))
            if not (isinstance(lrs, list) and lrs and all(isinstance(x, int | float) for x in lrs)):
                raise UnicompError(f"{rwhere}: lrs must be a list of numbers, got {lrs!r}")
            for seed in seeds:
                row_s = dict(row)
                needs = []
                backbone = str(row.get("backbone", ""))
                if backbone.startswith("run:@"):
                    pname = backbone[5:]
                    if pname not in prepare:
                        raise UnicompError(f"{rwhere}: {backbone} names no prepare entry")
                    pcells = prepare[pname]
                    pcell = next((c for c in pcells if c.seed == seed), pcells[0])
                    row_s["backbone"] = f"run:{pcell.cfg.out}"
                    needs.append(pcell.key)
                grid: list[float | None] = [None] if protocol == "paper" else list(map(float, lrs))
                for lr in grid:
                    extra = {} if lr is None else {"lr": lr, "patience": sweep.get("patience", 5)}
                    key = f"{suite_name}/{rslug}/s{seed}" + (
                        "" if lr is None else f"/lr{_lr_text(lr)}"
                    )
                    cfg = _cell_config(base, row_s, seed, rwhere, extra)
                    cfg.out = str(root / key)
                    cells.append(Cell(key, label, title, seed, cfg, needs, lr))
    # Seed by seed: a suite stopped part-way leaves whole tables with fewer seeds.
    cells.sort(key=lambda c: c.seed)  # (stable: rows keep their order within a seed)
    used = {n for c in cells for n in c.needs}
    prepared = [c for cs in prepare.values() for c in cs if c.key in used]
    return Suite(
        suite_name, path, protocol, seeds, suite_out, root, tables, prepared, cells,
        str(data.get("description") or ""), name,
    )  # fmt: skip


# --- running cells -------------------------------------------------------------------------------


def _read_metrics(cell: Cell) -> dict:
    folder = Path(cell.cfg.out)
    from unicomp.files import read_curve

    metrics = json.loads((folder / "metrics.json").read_text())
    curve = read_curve(folder / "curve.csv", metrics["steps"])
    best = next((r for r in curve if r["step"] == metrics.get("best_step")), None)
    # the selected weights scored on the training split (runs before that was recorded: the
    # running mean over the training batches of the selected step's evaluation window)
    metrics["train_accuracy_at_best"] = metrics.get("train_split_accuracy")
    if metrics["train_accuracy_at_best"] is None and best:
        metrics["train_accuracy_at_best"] = best["train_accuracy"]
    metrics["curve"] = [(r["step"], r["val_accuracy"]) for r in curve]
    return metrics


def _train(cells: list[Cell], logs: Path, jobs: int, threads: int | None, say) -> None:
    """Run the cells (unicomp.tools.jobs), each one's outcome said as it comes: ``[3/12] KEY:
    ...``."""
    for count, event in enumerate(run_cells(cells, logs, jobs, threads), 1):
        cell, said = event.cell, f"[{count}/{len(cells)}] {event.cell.key}"
        if event.what == "skipped":
            try:
                cell.metrics = _read_metrics(cell)
            except UnicompError as err:
                cell.status, cell.error = "failed", str(err)
                say(f"{said}: FAILED: {err}")
                continue
            say(f"{said}: finished before, skipped")
        elif event.what == "done":
            cell.metrics = _read_metrics(cell)
            say(
                f"{said}: test accuracy {cell.metrics['test_accuracy']:.4f} ({event.seconds:.0f} s)"
            )
        elif event.what == "not run":
            say(f"{said}: not run: {cell.error}")
        else:
            say(f"{said}: FAILED: {cell.error}")


def report_suite(suite: Suite) -> dict:
    """Tables, JSON and plots from the cells finished so far; nothing is trained (a suite
    still running elsewhere is read, not locked). Unfinished cells count as not run."""
    for cell in suite.prepare + suite.cells:
        folder = Path(cell.cfg.out)
        if (folder / "metrics.json").is_file() and not config_changes(cell.cfg, folder)[1]:
            cell.status, cell.metrics = "skipped", _read_metrics(cell)
        else:
            cell.status, cell.error = "not run", "not finished"
    suite.out.mkdir(parents=True, exist_ok=True)
    return summarise(suite, 0.0)


def run_suite(suite: Suite, jobs: int = 2, threads: int | None = None, say=print) -> dict:
    """Run (or skip) every cell of the suite, then write its tables, JSON and plots."""
    return run_suites([suite], suite.out / "logs", jobs, threads, say)[0]


def run_suites(
    suites: list[Suite], logs: Path, jobs: int = 2, threads: int | None = None, say=print
) -> list[dict]:
    """run_suite for several suites whose cells share the ``jobs`` slots (the cells of the
    first suite start first), then each suite's tables, JSON and plots."""
    from unicomp.files import folder_lock

    with contextlib.ExitStack() as held:
        for suite in suites:
            suite.out.mkdir(parents=True, exist_ok=True)
            held.enter_context(folder_lock(suite.out))  # one ablate per suite folder
        t0 = time.time()
        cells = {c.key: c for s in suites for c in s.prepare + s.cells}  # shared prepare: once
        _train(list(cells.values()), logs, jobs, threads, say)
        return [summarise(suite, time.time() - t0) for suite in suites]


# --- tables and plots -----------------------------------------------------------------------------


def _pick(cells: list[Cell]) -> Cell | None:
    """Sweep: the learning rate with the best validation score (then the lower lr)."""
    done = [c for c in cells if c.status in ("done", "skipped")]
    if not done:
        return None
    return max(done, key=lambda c: (c.metrics["val_accuracy"], -(c.lr or 0)))


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values, single=0.0)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def summarise(suite: Suite, seconds: float) -> dict:
    """Rows (mean ± std over seeds) per table; results.md, results.json and plots."""
    rows_out = []
    for table in suite.tables:
        title = str(table.get("title"))
        for row in table["rows"]:
            label = str(row.get("label") or f"{row.get('backbone')} {row.get('freeze')}")
            mine = [c for c in suite.cells if c.row == label]
            chosen, failed = [], []
            for seed in suite.seeds:
                seed_cells = [c for c in mine if c.seed == seed]
                pick = _pick(seed_cells)
                if pick is None:
                    failed += [f"s{seed}: {c.error}" for c in seed_cells if c.error][:1]
                else:
                    chosen.append(pick)
            rows_out.append(_row_summary(title, label, row, chosen, failed, mine))
    result = {
        "suite": suite.name,
        "file": str(suite.path),
        "protocol": suite.protocol,
        "seeds": suite.seeds,
        "seconds": round(seconds, 1),
        "rows": rows_out,
        "cells": [
            {
                "key": c.key,
                "row": c.row,
                "seed": c.seed,
                "lr": c.lr,
                "status": c.status,
                "error": c.error,
                **{k: v for k, v in c.metrics.items() if k != "curve"},
            }
            for c in suite.prepare + suite.cells
        ],
    }
    atomic_write_json(suite.out / "results.json", result)
    images = plot_suite(suite, rows_out)
    atomic_write_text(suite.out / "results.md", markdown(suite, rows_out, images))
    return result


def _row_summary(title, label, row, chosen: list[Cell], failed: list[str], all_cells) -> dict:
    m = [c.metrics for c in chosen]
    test = [x["test_accuracy"] for x in m]
    mean, std = mean_std(test, single=0.0) if test else (None, None)
    train = [x["train_accuracy_at_best"] for x in m if x.get("train_accuracy_at_best") is not None]
    cfg = (chosen or all_cells)[0].cfg if (chosen or all_cells) else None
    return {
        "table": title,
        "label": label,
        "backbone": row.get("backbone"),
        "freeze": row.get("freeze", "paper"),
        "backbone_layers": row.get("backbone_layers"),
        "paper": row.get("paper"),
        "seeds_done": len(chosen),
        "test_accuracy": test,
        "test_mean": mean,
        "test_std": std,
        "train_accuracy_at_best": train,
        "gap_mean": statistics.mean(a - b for a, b in zip(train, test, strict=False))
        if train and len(train) == len(test)
        else None,
        "steps_to_target": [x.get("steps_to_target") for x in m],
        "target_accuracy": cfg.train.target_accuracy if cfg else None,
        # what the verdict rules read (unicomp.reports.verdicts): evaluation noise, floor, budget
        "test_elements": [x.get("test_elements") for x in m],
        "test_constant_accuracy": [x.get("test_constant_accuracy") for x in m],
        "train_split_accuracy": [x.get("train_split_accuracy") for x in m],
        "batch_size": [c.cfg.train.batch_size for c in chosen],
        "family": m[0].get("backbone_type") if m else None,  # the model family (model_type)
        "total_params": m[0].get("total_params") if m else None,
        "steps": [x.get("steps") for x in m],
        "best_step": [x.get("best_step") for x in m],
        "lr": [c.lr if c.lr is not None else c.cfg.train.lr for c in chosen],
        # training plus, for output-only runs on cached features, computing the features
        "train_seconds": [
            (x.get("train_seconds") or 0) + (x.get("feature_seconds") or 0) for x in m
        ],
        "trainable_params": m[0].get("trainable_params") if m else None,
        "failed": failed,
        "curves": {c.seed: c.metrics.get("curve", []) for c in chosen},
        "runs": [c.cfg.out for c in chosen],
    }


def markdown(suite: Suite, rows: list[dict], images: dict[str, list[str]]) -> str:
    lines = [f"# Suite {suite.name}", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    first = suite.cells[0].cfg if suite.cells else None
    budget = ""
    if first is not None:
        t = first.train
        if suite.protocol == "paper":
            rates = f"lr {_lr_text(t.lr)} (rows may override)"
        else:
            rates = (
                f"lr grid {', '.join(sorted({_lr_text(c.lr) for c in suite.cells if c.lr}))}, "
                f"early stopping after {t.patience} evaluations without gain, the best lr "
                "chosen on validation"
            )
        args = f" {first.task_args}" if first.task_args else ""
        budget = (
            f"task {first.task}{args}, {t.steps} steps max, batch "
            f"{t.batch_size}, {rates}, {t.schedule} schedule, evaluation every "
            f"{t.eval_every} steps"
        )
    shown = suite.path
    if shown.is_absolute() and shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())
    done = [c for c in suite.prepare + suite.cells if c.metrics]
    cell_seconds = sum(c.metrics.get("train_seconds") or 0 for c in done)
    lines += [
        f"Protocol **{suite.protocol}**; seeds {', '.join(map(str, suite.seeds))}; {budget}. "
        f"Suite file `{shown}`; regenerate with `unicomp fpt ablate --suite {suite.asked}"
        f" --out {suite.root}`.",
        "",
        f"Wall time: {len(done)} finished runs, {cell_seconds / 60:.0f} minutes of training "
        "in all (each run's train_seconds, summed; two runs at a time, one thread each, on a "
        "shared 2-core CPU).",
        "",
    ]
    sources = sorted(
        {
            (
                c.cfg.backbone,
                re.sub(r"\(seed \d+\)", "(the run's seed)", c.metrics.get("backbone_source", "?")),
            )
            for c in done
        }
    )
    lines += ["Weights, as each run's metrics.json records them (backbone_source):", ""]
    lines += [f"- `{name}`: {source}" for name, source in sources]
    lines += [
        "",
        "Accuracy in %, mean ± std over seeds, of the test split at the best validation step. "
        "Train accuracy: the selected weights on the training split (runs that did not record "
        "it: the running mean on training batches over the evaluation window of that step); "
        "gap = train - test.",
        "",
    ]
    by_table: dict[str, list[dict]] = {}
    for r in rows:
        by_table.setdefault(r["table"], []).append(r)
    for title, trs in by_table.items():
        lines += [f"## {title}", ""]
        head = ["row", "backbone", "freeze", "trainable", "seeds", "test %", "paper %"]
        head += ["train %", "gap", f"steps to {100 * (trs[0]['target_accuracy'] or 0):.0f}% val"
                 " (each seed)", "steps", "lr", "train s/run (with features)"]  # fmt: skip
        cells = []
        for r in trs:
            fails = (
                f" ({len(r['failed'])} seed(s) missing: {r['failed'][0]})" if r["failed"] else ""
            )
            seconds = [s for s in r["train_seconds"] if s is not None]
            cells.append(
                [
                    r["label"] + fails,
                    f"`{r['backbone']}`"
                    + (f" ({r['backbone_layers']} layers)" if r["backbone_layers"] else ""),
                    r["freeze"],
                    f"{r['trainable_params']:,}" if r["trainable_params"] else "-",
                    r["seeds_done"],
                    f"**{_pct(r['test_accuracy'])}**",
                    "-" if r["paper"] is None else r["paper"],
                    _pct(r["train_accuracy_at_best"]),
                    "-" if r["gap_mean"] is None else f"{100 * r['gap_mean']:+.1f}",
                    ", ".join("-" if s is None else str(s) for s in r["steps_to_target"]) or "-",
                    ", ".join(str(s) for s in r["steps"]) or "-",
                    ", ".join(_lr_text(x) for x in r["lr"]) or "-",
                    f"{statistics.mean(seconds):.0f}" if seconds else "-",
                ]
            )
        lines.append(markdown_table(head, cells))
        lines.append("")
        for image in images.get(title, []):
            lines += [f"![{title}]({image})", ""]
    return "\n".join(lines)


def plot_suite(suite: Suite, rows: list[dict]) -> dict[str, list[str]]:
    """Per table: validation accuracy against step (mean over seeds) and a bar chart of test
    accuracy (mean ± std, the paper's number as a marker). Returns file names per table."""
    from unicomp.plots import pyplot, save_figure

    plt = pyplot()

    images: dict[str, list[str]] = {}
    by_table: dict[str, list[dict]] = {}
    for r in rows:
        by_table.setdefault(r["table"], []).append(r)
    for title, trs in by_table.items():
        name = slug(title)
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in trs:
            curves = [c for c in r["curves"].values() if c]
            if not curves:
                continue
            steps = sorted({s for c in curves for s, _ in c})
            mean = []
            for s in steps:
                vals = [v for c in curves for st, v in c if st == s]
                mean.append(100 * statistics.mean(vals))
            ax.plot(steps, mean, label=r["label"])
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy (%), mean over seeds")
        ax.set_title(f"{suite.name}: {title} ({suite.protocol} protocol)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, suite.out / f"{name}-curves.png")
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [r["label"] for r in trs]
        means = [100 * (r["test_mean"] or 0) for r in trs]
        stds = [100 * (r["test_std"] or 0) for r in trs]
        ax.bar(range(len(trs)), means, yerr=stds, capsize=3, label="unicomp")
        papers = [(i, r["paper"]) for i, r in enumerate(trs) if r["paper"] is not None]
        if papers:
            ax.scatter(
                *zip(*papers, strict=True), color="red", marker="_", s=500, zorder=3,
                linewidths=2.5, label="paper", clip_on=False,
            )  # fmt: skip
        ax.set_xticks(range(len(trs)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 102)
        ax.set_title(f"{suite.name}: {title}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, suite.out / f"{name}-bars.png")
        images[title] = [f"{name}-curves.png", f"{name}-bars.png"]
    return images


def describe(suite: Suite) -> str:
    """The cells a suite would run (``--dry-run``)."""
    lines = [f"suite {suite.name} ({suite.path}), protocol {suite.protocol}, seeds {suite.seeds}"]
    for c in suite.prepare + suite.cells:
        t = c.cfg.train
        lines.append(
            f"  {c.key}: {c.cfg.task} backbone={c.cfg.backbone} freeze={c.cfg.freeze} "
            f"layers={c.cfg.backbone_layers or 'all'} steps={t.steps} lr={t.lr:g} "
            f"batch={t.batch_size}" + (f" needs={','.join(c.needs)}" if c.needs else "")
        )
    return "\n".join(lines)
