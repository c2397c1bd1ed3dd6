"""Tables and verdicts in README.md and docs/ generated from committed run records.

A document holds generated blocks between two markers, each naming the records it shows::

    <!-- unicomp:claims results/reproduce-quick fpt-vs-full,pretrained-vs-random -->
    ...                                         (written by unicomp, never by hand)
    <!-- /unicomp:claims -->

    <!-- unicomp:run results/reproduce-quick -->
    ...
    <!-- /unicomp:run -->

``claims``: the named claims' rows (all of them without a list) from ``<records>/claims.json``,
which ``unicomp reproduce`` writes from the run folders beside it; ``run``: when, where and how
long those runs were made (``<records>/run.json``); ``collection``: a data set made by a
learning agent (``dt collect --from-training``): what it holds and the agent's evaluation
curve, from ``<records>/collection.json``; ``benchmark``: a table a script under benchmarks/
measured, with its command, date and machine, from the JSON record it wrote
(``results/benchmarks/<name>.json``); ``timeseries``: the time-series campaign's
``classification``, ``forecasting`` or ``verdicts`` table, from the run folders themselves
(:mod:`unicomp.reports.tsreport`). ``unicomp reproduce --report-only`` (or ``unicomp ts report``)
rewrites every block; tests/test_documents.py fails when a document differs from what its
records produce.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unicomp.errors import UnicompError
from unicomp.files import atomic_write_text
from unicomp.runs import markdown_table

BLOCK = re.compile(
    r"(?P<open><!-- unicomp:(?P<kind>[a-z]+) (?P<src>[^\s>]+)(?: (?P<arg>[^\s>]+))? -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /unicomp:(?P=kind) -->)",
    re.S,
)


def _load(root: Path, src: str, name: str, where: str) -> dict:
    path = root / src / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UnicompError(
            f"{where}: {src}/{name} does not exist (its records are missing)"
        ) from None
    except (OSError, ValueError) as err:
        raise UnicompError(f"{where}: {src}/{name} is not readable JSON ({err})") from None


def render(kind: str, src: str, arg: str | None, root: Path, where: str) -> str:
    """The Markdown of one block (ending in a newline)."""
    if kind == "claims":
        report = _load(root, src, "claims.json", where)
        rows = report["claims"]
        if arg:
            names = arg.split(",")
            known = {r["claim"] for r in rows}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise UnicompError(f"{where}: {src} has no claim {', '.join(unknown)}")
            rows = [r for n in names for r in rows if r["claim"] == n]
        table = markdown_table(
            ["claim", "paper's figure", "ours [budget: fraction of the paper's]", "verdict",
             "reason"],
            [[f"{r['claim']}: {r['text']}", r["paper"], r["ours"], f"**{r['verdict']}**",
              r["reason"]] for r in rows],
        )  # fmt: skip
        return table + "\n"
    if kind == "run":
        run = _load(root, src, "run.json", where)
        v = run["versions"]
        commit = run.get("code") or f"commit {(v.get('git_commit') or 'unknown')[:12]}"
        calls = run.get("calls", 1)
        return (
            f"Measured with `{run['command']}` ({run['preset']} preset) on {run['date']}: "
            f"{run['machine']} (bf16 flags: {run['bf16_flags']}); unicomp {v['unicomp_version']}"
            f" ({commit}), torch {v['torch']}. {run['runs']} run folders, "
            f"{run['wall_seconds'] / 60:.1f} minutes of wall time "
            f"({calls} call{'s' if calls > 1 else ''}), "
            f"{run['train_seconds'] / 60:.1f} minutes of training in all. Report: "
            f"[{src}/report.md]({{rel}}{src}/report.md).\n"
        )
    if kind == "collection":
        return _collection(_load(root, src, "collection.json", where))
    if kind == "benchmark":
        path = Path(src)
        return _benchmark(_load(root, str(path.parent), path.name, where))
    if kind == "timeseries":
        from unicomp.reports import tsreport

        try:
            return tsreport.render(root / src, arg or "")
        except UnicompError as err:
            raise UnicompError(f"{where}: {err}") from None
    raise UnicompError(
        f"{where}: unknown generated block kind {kind!r} (claims, run, collection, benchmark, "
        "timeseries)"
    )


def _benchmark(b: dict) -> str:
    """A benchmark's table, then how, when and where it was measured."""
    v = b["versions"]
    commit = (v.get("git_commit") or "unknown")[:12]
    commit += " with changes" if v.get("git_dirty") else ""
    table = markdown_table(b["columns"], b["rows"]).rstrip("\n")
    return (
        f"{table}\n\n{b['about']} Measured with `{b['command']}` on {b['date']}: {b['machine']} "
        f"(bf16 flags: {b['bf16_flags']}), {b['threads']} torch thread(s); unicomp "
        f"{v['unicomp_version']} (commit {commit}), torch {v['torch']}.\n"
    )


def _collection(c: dict) -> str:
    """A learning agent's data set: one line of what it holds, then its evaluation curve."""
    ref = c.get("reference_scores")
    if "reference_scores" not in c:  # scored against our table for the environment, if any
        scale = ""
    elif ref:
        scale = (f"; reference scores {ref['ref_min_score']:.2f} (random) and "
                 f"{ref['ref_max_score']:.2f} (the final agent)")  # fmt: skip
    else:
        scale = "; no reference scores (the final agent did not beat the random policy)"
    seconds = c.get("train_seconds", c["seconds"])
    text = (
        f"`{c['env_id']}`, {c['suite']}: {c['steps']:,} transitions in {c['episodes']:,} "
        f"episodes, data return {c['return_mean']:.2f} ± {c['return_std']:.2f} "
        f"(max {c['return_max']:g}){scale}; {seconds / 60:.1f} minutes to train "
        f"(seed {c['seed']}{', ' + c['machine'] if c.get('machine') else ''}).\n\n"
    )
    points = ([c["random_policy"]] if "random_policy" in c else []) + c.get("evaluations", [])
    rows = [
        [
            "random policy" if i == 0 and "random_policy" in c else f"{p['step']:,}",
            f"{p['return_mean']:.2f} ± {p['return_std']:.2f}",
            str(p["episodes"]),
            "" if p.get("exploration_rate") is None else f"{p['exploration_rate']:g}",
        ]
        for i, p in enumerate(points)
    ]
    return text + markdown_table(["step", "evaluation return", "episodes", "epsilon"], rows) + "\n"


def regenerate(text: str, doc: Path, root: Path) -> str:
    """``text`` with every generated block rewritten from its records."""
    rel = "../" * (len(doc.resolve().relative_to(root.resolve()).parts) - 1)

    def block(m: re.Match) -> str:
        line = text.count("\n", 0, m.start()) + 1
        where = f"{doc.name}:{line}"
        body = render(m["kind"], m["src"], m["arg"], root, where).replace("{rel}", rel)
        return m["open"] + body + m["close"]

    return BLOCK.sub(block, text)


def documents(root: Path) -> list[Path]:
    """README.md and every Markdown file under docs/."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else found


def update_documents(root: Path, check: bool = False) -> list[Path]:
    """Rewrite the generated blocks of ``root``'s documents; the ones that changed (with
    ``check``: that would change, nothing written)."""
    changed = []
    for doc in documents(root):
        text = doc.read_text()
        if "<!-- unicomp:" not in text:
            continue
        new = regenerate(text, doc, root)
        if new != text:
            changed.append(doc)
            if not check:
                atomic_write_text(doc, new)
    return changed
