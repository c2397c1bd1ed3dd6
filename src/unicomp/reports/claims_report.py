"""The report of ``unicomp reproduce``: its figures, drawn from the run folders
(:func:`draw_figures`), and its blocks (:func:`report_blocks`: headings, tables, images, links,
commands) rendered alike to Markdown (:func:`to_markdown`) and to one self-contained HTML page
(:func:`to_html`: images embedded as data: URIs, no external resource)."""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path

from unicomp.plots import plot_returns, pyplot, save_figure
from unicomp.reports.verdicts import VERDICTS
from unicomp.runs import markdown_table, mean_std
from unicomp.tools.ablate import slug
from unicomp.tools.jobs import Cell, family, finished_metrics


def shown(path: str | Path) -> str:
    """A path for a command line: relative to the working folder where it is inside it."""
    path, here = Path(path).absolute(), Path.cwd()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def _rel(path: str | Path, out: Path) -> str:
    """A path for a link in the report (relative to the report's folder)."""
    path = Path(path).absolute()
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def draw_figures(
    out: Path, suites: dict, results: dict, cells: list[Cell], collection, cql: dict
) -> dict:
    """Every figure of the report: {key: {title, file, runs, command}} (paths relative to
    ``out``); FPT plots come from ablate, the rest are drawn here from the run folders."""
    figs: dict[str, dict] = {}
    for group, suite in suites.items():
        cmd = f"unicomp fpt ablate --suite {shown(suite.path)} --out {shown(suite.root)}"
        for i, table in enumerate(suite.tables):
            rows = [r for r in results[group]["rows"] if r["table"] == table["title"]]
            runs = sorted({run for r in rows for run in r["runs"]})
            stem = suite.out / slug(table["title"])
            for kind, what in (("bars", "test accuracy (mean ± std over seeds; red: paper)"),
                               ("curves", "validation accuracy against step")):  # fmt: skip
                figs[f"{group}-{i}" + ("" if kind == "bars" else "-curves")] = {
                    "title": f"{table['title']}: {what}",
                    "file": _rel(f"{stem}-{kind}.png", out),
                    "runs": [_rel(r, out) for r in runs],
                    "command": cmd,
                }
    # the first seed's FPT run (under a sweep: the learning rate chosen on validation)
    fpt_rows = [r for r in results.get("fpt", {}).get("rows", []) if r["label"] == "FPT"]
    runs = fpt_rows[0]["runs"] if fpt_rows else []
    fpt_run = Path(runs[0]) if runs else out / "none"
    png = out / "figures" / "attention.png"
    has_weights = (fpt_run / "best.safetensors").is_file()
    if (fpt_run / "metrics.json").is_file() and (png.is_file() or has_weights):
        from unicomp.tools.attention import attention_command

        if not png.is_file():
            attention_command(fpt_run, example=0, split="test", out=png)
        figs["attention"] = {
            "title": "attention of the trained FPT (test example 0), mean over heads per layer",
            "file": _rel(png, out), "runs": [_rel(fpt_run, out)],
            "command": f"unicomp fpt attention {shown(fpt_run)} --example 0 "
                       f"--out {shown(png)}",
        }  # fmt: skip
    dt = [c for c in cells if c.table == "dt" and finished_metrics(c)]
    if dt:
        figs.update(_dt_figures(out, dt, collection))
    pc = [c for c in cells if c.table == "perceiver" and finished_metrics(c)]
    if pc:
        figs.update(_perceiver_figures(out, pc))
    at = [c for c in cells if c.table.startswith("atari:") and finished_metrics(c)]
    if at:
        figs.update(_atari_figures(out, at, cql))
    return {k: v for k, v in figs.items() if (out / v["file"]).is_file()}


def _train_command(cell: Cell) -> str:
    run = shown(cell.cfg.out)
    return f"unicomp {family(cell.cfg)} train --config {run}/config.yaml --out {run}"


def _dt_figures(out: Path, cells: list[Cell], collection) -> dict:
    plt = pyplot()
    by_label: dict[str, list[dict]] = {}
    for c in cells:
        by_label.setdefault(c.row, []).append(finished_metrics(c))
    figs = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(by_label)
    means = [100 * statistics.fmean([m["success_rate"] for m in by_label[k]]) for k in labels]
    stds = [100 * mean_std([m["success_rate"] for m in by_label[k]], single=0.0)[1] for k in labels]
    ax.bar(range(len(labels)), means, yerr=stds, capsize=3, label="unicomp")
    paper = {"DT": 71.8, "BC": 1.4}
    marks = [(i, paper[k]) for i, k in enumerate(labels) if k in paper]
    if marks:
        ax.scatter(*zip(*marks, strict=True), color="red", marker="_", s=500, linewidths=2.5,
                   zorder=3, label="paper (1K episodes)")  # fmt: skip
    if collection:
        rate = collection["components"][0].get("success_rate")
        if rate is not None:
            ax.axhline(100 * rate, color="gray", ls="--", label="random policy (the data)")
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("Key-to-Door success (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7)
    ax.set_title("Decision Transformer on Key-to-Door (target return 1)")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "dt-bars.png")
    cmd = "; ".join(_train_command(c) for c in cells[:1]) + " (each run likewise)"
    figs["dt-bars"] = {"title": "Key-to-Door success by algorithm (mean ± std over seeds)",
                       "file": "figures/dt-bars.png", "runs": [_rel(c.cfg.out, out) for c in cells],
                       "command": cmd}  # fmt: skip
    dts = [c for c in cells if c.row == "DT"]
    if dts:  # the same picture as unicomp plot draws for DT runs
        png = out / "figures" / "dt-targets.png"
        plot_returns({Path(c.cfg.out): finished_metrics(c)["eval"] for c in dts}, png)
        runs = [shown(c.cfg.out) for c in dts]
        figs["dt-targets"] = {"title": "DT return against target return (each seed)",
                              "file": _rel(png, out), "runs": [_rel(c.cfg.out, out) for c in dts],
                              "command": f"unicomp plot {' '.join(runs)} -o curves.png "
                                         "(-> curves-returns.png)"}  # fmt: skip
    return figs


def _atari_figures(out: Path, cells: list[Cell], cql: dict) -> dict:
    """Normalised score by row (and CQL's where it ran), one group of bars per game (mean ±
    std over seeds)."""
    plt = pyplot()
    games = list(dict.fromkeys(c.table.partition(":")[2] for c in cells))
    rows = list(dict.fromkeys(c.row for c in cells)) + (["CQL"] if cql else [])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(rows)
    for j, row in enumerate(rows):
        means, stds = [], []
        for game in games:
            runs = (
                cql.get(game, [])
                if row == "CQL"
                else [
                    finished_metrics(c)
                    for c in cells
                    if c.row == row and c.table == f"atari:{game}"
                ]
            )
            scores = [m.get("normalized_score_mean") for m in runs]
            scores = [v for v in scores if v is not None]
            means.append(statistics.fmean(scores) if scores else 0.0)
            stds.append(mean_std(scores, single=0.0)[1] if scores else 0.0)
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(games))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=row)
    ax.axhline(0, color="gray", lw=0.8)
    ax.axhline(100, color="gray", ls="--", lw=0.8, label="the DQN that made the data")
    ax.set_xticks(range(len(games)), games)
    ax.set_ylabel("normalised score (0 random, 100 the data's DQN)")
    ax.legend(fontsize=7)
    ax.set_title("Decision Transformer on MinAtar (1% DQN-replay-like data)")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "atari-bars.png")
    return {
        "atari-bars": {
            "title": "MinAtar: normalised score by algorithm (mean ± std over seeds)",
            "file": "figures/atari-bars.png",
            "runs": [_rel(c.cfg.out, out) for c in cells]
            + [_rel(r["run"], out) for runs in cql.values() for r in runs],
            "command": _train_command(cells[0]) + " (each run likewise)",
        }
    }


def _perceiver_figures(out: Path, cells: list[Cell]) -> dict:
    plt = pyplot()
    by: dict[str, list[float]] = {}
    for c in cells:
        by.setdefault(c.row, []).append(finished_metrics(c)["test_accuracy"])
    fig, ax = plt.subplots(figsize=(5, 4))
    labels = list(by)
    ax.bar(labels, [100 * statistics.fmean(by[k]) for k in labels],
           yerr=[100 * mean_std(by[k], single=0.0)[1] for k in labels], capsize=3)  # fmt: skip
    ax.set_ylabel("hidden-pixel test accuracy (%)")
    ax.set_title("Perceiver IO vs Perceiver: digits-inpaint")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "perceiver-bars.png")
    runs = [_rel(c.cfg.out, out) for c in cells]
    figs = {"perceiver-bars": {"title": "Perceiver IO against Perceiver (mean ± std over seeds)",
                               "file": "figures/perceiver-bars.png", "runs": runs,
                               "command": _train_command(cells[0])}}  # fmt: skip
    first = cells[0]
    if (Path(first.cfg.out) / "examples.png").is_file():
        figs["perceiver-examples"] = {
            "title": f"{first.row} test images: input, prediction, target",
            "file": _rel(Path(first.cfg.out) / "examples.png", out), "runs": [runs[0]],
            "command": _train_command(first),
        }  # fmt: skip
    return figs


def report_blocks(report: dict, out: Path) -> list[tuple]:
    """The report as blocks, rendered to Markdown and to HTML alike."""
    v = report["versions"]
    commit = f"{v['git_commit']}{' (with uncommitted changes)' if v['git_dirty'] else ''}"
    b: list[tuple] = [
        ("h", 1, f"unicomp reproduce: the papers' claims ({report['preset']} preset)"),
        ("p", f"Budget: {report['budget']}."),
        (
            "table",
            ["what", "value"],
            [
                ["command", report["command"]],
                ["date", report["date"]],
                ["machine", f"{report['machine']}; bf16 flags: {report['bf16_flags']}"],
                [
                    "versions",
                    f"unicomp {v['unicomp_version']}, torch {v['torch']}, transformers "
                    f"{v['transformers_version']}, Python {v['python']}",
                ],
                ["git commit", report.get("code") or commit or "unknown (not a git checkout)"],
                [
                    "time",
                    f"{report['wall_seconds'] / 60:.1f} minutes of wall time "
                    f"({report['calls']} call{'s' if report['calls'] > 1 else ''}); "
                    f"{report['runs']} run folders, {report['train_seconds'] / 60:.1f} "
                    "minutes of training in all",
                ],
            ],
        ),  # fmt: skip
        ("h", 2, "Claims"),
        ("p", RULES_TEXT),
        (
            "table",
            [
                "claim",
                "paper's figure",
                "ours [budget: fraction of the paper's]",
                "verdict",
                "reason",
                "figures",
            ],
            [
                [
                    f"{r['claim']}: {r['text']}",
                    r["paper"],
                    r["ours"],
                    r["verdict"],
                    r["reason"],
                    Refs(r["figures"]),
                ]
                for r in report["claims"]
            ],
        ),  # fmt: skip
        ("h", 2, "Figures"),
    ]
    for key, f in report["figures"].items():
        b += [("h", 3, f"{key}: {f['title']}", f"fig-{key}"), ("img", f["file"], f["title"]),
              ("links", [("run folder " + r, r) for r in f["runs"]]),
              ("code", f["command"])]  # fmt: skip
    return b


RULES_TEXT = (
    "Ours: mean ± std over seeds (n = seeds), and each row's budget: its training examples "
    "(steps x batch) as a fraction of what the paper needed (unknown where our references "
    "do not say), and its model size (the paper's FPT: GPT-2 base, 124M parameters). A "
    "difference counts beyond the margin: the larger of 1 point and twice the standard error"
    " of the difference, which adds each figure's evaluation noise (its "
    "test elements or episodes) to the seeds' spread. A compared row that did not learn "
    "(at or near chance or its test split's constant answer) makes the claim 'not "
    "measured'; 'holds' and 'does not hold' need 3 seeds in every row ('indicative' with "
    "fewer); a baseline below half the paper's budget, or a failure with any row below it, "
    "is 'not at this budget'; a figure not "
    "in the records is 'missing'. The rules: docs/reproduce.md."
)


class Refs(list):
    """A table cell naming figures: plain names in Markdown, links in HTML."""

    def __str__(self) -> str:
        return ", ".join(self) or "-"


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            lines += [markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "links":
            lines += [", ".join(f"[{text}]({href})" for text, href in block[1]), ""]
        elif kind == "code":
            lines += ["```bash", block[1], "```", ""]
    return "\n".join(lines)


_CSS = """body{font-family:sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:4px 6px;
vertical-align:top;font-size:13px}th{background:#eee}img{max-width:100%;border:1px solid #ddd}
pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}.holds{background:#d8f5d8}
.partly{background:#fff3c4}.does-not-hold{background:#f8d0d0}.not-measured,.missing,
.not-at-this-budget{background:#e4e4e4}.indicative{background:#eef3ff}"""


def to_html(blocks: list[tuple], out: Path) -> str:
    """One page, nothing loaded from elsewhere: images as data: URIs, the style inline."""
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(blocks[0][2])}</title><style>{_CSS}</style></head><body>"]  # fmt: skip
    for block in blocks:
        kind = block[0]
        if kind == "h":
            anchor = f" id='{e(block[3])}'" if len(block) > 3 else ""
            parts.append(f"<h{block[1]}{anchor}>{e(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            body = ""
            for row in block[2]:
                tds = []
                for x in row:
                    if isinstance(x, Refs):  # links to the figures below
                        refs = ", ".join(f"<a href='#fig-{e(k)}'>{e(k)}</a>" for k in x)
                        tds.append(f"<td>{refs or '-'}</td>")
                        continue
                    css = str(x).replace(" ", "-") if str(x) in VERDICTS else ""
                    tds.append(f"<td class='{css}'>" if css else "<td>")
                    tds[-1] += f"{e(str(x))}</td>"
                body += "<tr>" + "".join(tds) + "</tr>"
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode((out / block[1]).read_bytes()).decode()
            parts.append(f"<p><img alt='{e(block[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "links":
            links = ", ".join(f"<a href='{e(href)}'>{e(text)}</a>" for text, href in block[1])
            parts.append(f"<p>{links}</p>")
        elif kind == "code":
            parts.append(f"<pre>{e(block[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
