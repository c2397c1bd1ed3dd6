"""Pictures of runs, and the matplotlib set-up every picture in unicomp shares.

``unicomp plot RUN... [-o FILE]`` draws:

* ``FILE``: the learning curves of the runs, overlaid (one colour per run): training loss
  (dashed) and validation loss (solid) against step, and validation accuracy against step
  for runs that measure one (a continuous-action DT has none), from each run's curve.csv;
* ``FILE``'s stem + ``-returns.png``, where some runs are Decision Transformer runs that
  acted in their environment: the mean return (± std over episodes) reached for each target
  return, against the target, with the ideal y = x line. From RUN/eval.json (``unicomp dt
  eval``) where present, else the evaluation in RUN/metrics.json. BC runs read no target and
  are left out of it.

FILE defaults to RUN/curves.png for one run and ./curves.png for several.
"""

from __future__ import annotations

import json
from pathlib import Path

from unicomp.errors import UnicompError
from unicomp.files import atomic_write


def pyplot():
    """matplotlib.pyplot drawing into files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file), then close it."""
    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        pyplot().close(fig)


def _curve(run: Path) -> list[dict]:
    from unicomp.files import read_curve

    if not (run / "curve.csv").is_file():
        raise UnicompError(f"{run} has no curve.csv (not a unicomp run folder, or not started)")
    return read_curve(run / "curve.csv", upto=1 << 62)


def _evaluations(run: Path) -> list[dict]:
    """A DT run's evaluations with a target return (eval.json first, else metrics.json)."""
    for name in ("eval.json", "metrics.json"):
        path = run / name
        if path.is_file():
            try:
                evals = json.loads(path.read_text()).get("eval") or []
            except (OSError, ValueError, AttributeError) as err:
                raise UnicompError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
            if evals:
                return [e for e in evals if e.get("target_return") is not None]
    return []


def plot_curves(runs: list[Path], path: Path) -> None:
    plt = pyplot()
    curves = {run: _curve(run) for run in runs}
    with_accuracy = any(r["val_accuracy"] is not None for c in curves.values() for r in c)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(11 if with_accuracy else 6, 4))
    axes = list(axes) if with_accuracy else [axes]
    for i, (run, rows) in enumerate(curves.items()):
        color = f"C{i % 10}"
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["train_loss"] for r in rows], "--", color=color, alpha=0.7)
        axes[0].plot(steps, [r["val_loss"] for r in rows], "-", color=color, label=run.name)
        if with_accuracy:
            points = [(r["step"], r["val_accuracy"]) for r in rows if r["val_accuracy"] is not None]
            if points:
                axes[1].plot(*zip(*points, strict=True), "-", color=color, label=run.name)
    axes[0].set(xlabel="step", ylabel="loss (solid: validation, dashed: training)")
    axes[0].set_title("loss")
    if with_accuracy:
        axes[1].set(xlabel="step", ylabel="validation accuracy", ylim=(-0.02, 1.02))
        axes[1].set_title("validation accuracy")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_returns(evaluated: dict[Path, list[dict]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    targets = [e["target_return"] for evals in evaluated.values() for e in evals]
    returns = [e["return_mean"] for evals in evaluated.values() for e in evals]
    low, high = min(targets + returns), max(targets + returns)
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], ":", color="gray", label="y = x")
    for run, evals in evaluated.items():
        evals = sorted(evals, key=lambda e: e["target_return"])
        ax.errorbar(
            [e["target_return"] for e in evals],
            [e["return_mean"] for e in evals],
            yerr=[e.get("return_std", 0.0) for e in evals],
            marker="o",
            capsize=3,
            label=run.name,
        )
    ax.set(xlabel="target return", ylabel="return reached (mean ± std over episodes)")
    ax.set_title("Decision Transformer: return against target return")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_runs(runs: list[str | Path], out: str | Path | None = None) -> list[Path]:
    """Draw the pictures described in the module docstring; return the files written."""
    folders = [Path(r) for r in runs]
    for folder in folders:
        if not folder.is_dir():
            raise UnicompError(f"run folder {folder} does not exist")
    path = Path(out) if out else (folders[0] if len(folders) == 1 else Path(".")) / "curves.png"
    if path.suffix.lower() != ".png":
        raise UnicompError(f"-o {path}: expected a .png file name")
    if not path.parent.is_dir():
        raise UnicompError(f"-o {path}: folder {path.parent} does not exist")
    plot_curves(folders, path)
    written = [path]
    evaluated = {run: evals for run in folders if (evals := _evaluations(run))}
    if evaluated:
        returns = path.with_name(f"{path.stem}-returns.png")
        plot_returns(evaluated, returns)
        written.append(returns)
    return written
