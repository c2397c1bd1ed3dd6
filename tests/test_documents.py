"""One source of truth: the tables and verdicts in README.md and docs/ come from the run
records committed under results/, and the committed report regenerates from those records
byte for byte (unicomp reproduce --report-only)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from unicomp.errors import UnicompError
from unicomp.reports.documents import documents, update_documents
from unicomp.reports.reproduce import reproduce

ROOT = Path(__file__).resolve().parents[1]
QUICK = Path("results") / "reproduce-quick"


def test_every_generated_table_in_the_docs_matches_its_records():
    stale = update_documents(ROOT, check=True)
    assert not stale, (
        f"{[str(p.relative_to(ROOT)) for p in stale]} differ from their records; run "
        "unicomp reproduce --preset quick --out results/reproduce-quick --report-only"
    )
    # the claims' pages carry generated blocks (a page without them would pass vacuously)
    text = (ROOT / "docs" / "results.md").read_text()
    assert text.count("<!-- unicomp:claims results/reproduce-quick") >= 8
    page = (ROOT / "docs" / "reproduce.md").read_text()
    assert "<!-- unicomp:run results/reproduce-quick -->" in page


def test_the_committed_report_regenerates_from_its_records_alone(tmp_path, monkeypatch):
    """A copy of the records (no weights, no data set: what git holds) gives the committed
    report.md and claims.json back, byte for byte."""
    copy = tmp_path / QUICK
    shutil.copytree(ROOT / QUICK, copy)
    for weights in [*copy.rglob("*.safetensors"), *copy.rglob("*.pt")]:
        weights.unlink()  # a working copy may hold them; the records must not need them
    monkeypatch.chdir(tmp_path)
    reproduce("quick", QUICK, report_only=True, say=lambda _: None)
    for name in ("report.md", "claims.json"):
        assert (copy / name).read_text() == (ROOT / QUICK / name).read_text(), name


def test_the_committed_records_are_records_not_weights():
    tracked = [p for p in (ROOT / QUICK).rglob("*") if p.is_file()]
    names = {p.name for p in tracked}
    assert {"config.yaml", "metrics.json", "curve.csv", "run.json", "claims.json"} <= names
    ignored = (ROOT / ".gitignore").read_text()
    for pattern in ("results/**/*.safetensors", "results/**/*.pt", "results/**/logs/"):
        assert pattern in ignored
    run = json.loads((ROOT / QUICK / "run.json").read_text())
    assert run["preset"] == "quick" and run["machine"] and run["date"]


# --- the mechanism, on generated records -----------------------------------------------------


def _records(root: Path, verdict: str = "holds", ours: str = "FPT 99.0 ± 0.5 (n=3)") -> None:
    src = root / "results" / "r"
    src.mkdir(parents=True, exist_ok=True)
    claims = {"claims": [{"claim": "a", "text": "A", "paper": "1", "ours": ours,
                          "verdict": verdict, "reason": "why"},
                         {"claim": "b", "text": "B", "paper": "2", "ours": "x",
                          "verdict": "missing", "reason": "missing: gone"}]}  # fmt: skip
    (src / "claims.json").write_text(json.dumps(claims))
    run = {"command": "unicomp reproduce --preset quick --out results/r", "preset": "quick",
           "date": "2026-12-07 14:00 UTC", "machine": "a CPU, 2 cores, GPU none",
           "bf16_flags": "none", "runs": 3, "wall_seconds": 120.0, "calls": 1,
           "train_seconds": 90.0, "versions": {"git_commit": "abc", "unicomp_version": "0.1.0",
                                               "torch": "2.13.0"}}  # fmt: skip
    (src / "run.json").write_text(json.dumps(run))


def _doc(root: Path, body: str = "") -> Path:
    (root / "docs").mkdir(exist_ok=True)
    doc = root / "docs" / "page.md"
    doc.write_text(
        "# Page\n\n<!-- unicomp:claims results/r a -->\n" + body + "<!-- /unicomp:claims -->\n"
        "\ntext\n\n<!-- unicomp:run results/r -->\n<!-- /unicomp:run -->\n"
    )
    return doc


def test_blocks_are_written_from_records_and_a_hand_edit_is_caught(tmp_path):
    _records(tmp_path)
    doc = _doc(tmp_path)
    assert update_documents(tmp_path) == [doc]
    text = doc.read_text()
    assert "| a: A | 1 | FPT 99.0 ± 0.5 (n=3) | **holds** | why |" in text
    assert "| b: B" not in text  # only the claims the marker names
    assert "2.0 minutes of wall time (1 call)" in text
    assert "[results/r/report.md](../results/r/report.md)" in text
    assert update_documents(tmp_path, check=True) == []  # idempotent
    doc.write_text(text.replace("99.0 ± 0.5", "99.9 ± 0.1"))  # a number typed by hand
    assert update_documents(tmp_path, check=True) == [doc]
    _records(tmp_path, verdict="not measured")  # the records change: the page must follow
    update_documents(tmp_path)
    assert "**not measured**" in doc.read_text() and "**holds**" not in doc.read_text()
    assert documents(tmp_path) == [doc]


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("<!-- unicomp:claims results/nowhere -->", "results/nowhere/claims.json does not exist"),
        ("<!-- unicomp:claims results/r zzz -->", "results/r has no claim zzz"),
        ("<!-- unicomp:table results/r -->", "unknown generated block kind 'table'"),
    ],
)
def test_a_block_naming_missing_records_is_a_one_line_error(tmp_path, marker, message):
    _records(tmp_path)
    (tmp_path / "docs").mkdir()
    kind = marker.split(":")[1].split()[0]
    (tmp_path / "docs" / "p.md").write_text(f"x\n{marker}\n<!-- /unicomp:{kind} -->\n")
    with pytest.raises(UnicompError, match=message) as err:
        update_documents(tmp_path)
    assert "\n" not in str(err.value) and "p.md:2" in str(err.value)


def test_unreadable_records_are_named(tmp_path):
    _records(tmp_path)
    (tmp_path / "results" / "r" / "claims.json").write_text("{")
    _doc(tmp_path)
    with pytest.raises(UnicompError, match="claims.json is not readable JSON"):
        update_documents(tmp_path)


def test_paths_inside_a_moved_run_folder_are_read_under_its_new_place():
    from unicomp.experiments.common import _moved_with_the_folder

    saved = {"out": "/a/x/results/q/dt/bc/s0", "data": "/a/x/results/q/dt/key-to-door",
             "backbone": "minilm-l6", "other": "/elsewhere/file",
             "twin": "random:/a/x/results/q/_backbones/w32"}  # fmt: skip
    moved = _moved_with_the_folder(saved, "/b/results/q/dt/bc/s0")
    assert moved["data"] == "/b/results/q/dt/key-to-door"
    assert moved["twin"] == "random:/b/results/q/_backbones/w32"
    assert moved["backbone"] == "minilm-l6" and moved["other"] == "/elsewhere/file"
    assert _moved_with_the_folder(saved, saved["out"]) == saved


def test_the_docs_name_no_machine_paths():
    """README.md and docs/ show paths a reader has (relative ones, $VARIABLES, ~/.cache),
    never a folder of the machine the docs were written on."""
    machine = re.compile(r"(?<![\w.$~-])/(work|root|home|tmp|Users|mnt)/")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if machine.search(line)
    ]
    assert not found, "\n".join(found)


def test_collection_and_benchmark_blocks_render_their_records(tmp_path):
    """A learning agent's data set (its evaluation curve) and a benchmark's table come from
    the JSON records the commands wrote, with how, when and where they were made."""
    rec = tmp_path / "results" / "m" / "atari" / "breakout"
    rec.mkdir(parents=True)
    collection = {"env_id": "MinAtar/Breakout-v1", "suite": "dqn-replay", "steps": 1000,
                  "episodes": 40, "return_mean": 1.5, "return_std": 0.5, "return_max": 4.0,
                  "seed": 0, "seconds": 70.0, "train_seconds": 60.0,
                  "reference_scores": {"ref_min_score": 0.6, "ref_max_score": 12.0},
                  "random_policy": {"step": 0, "return_mean": 0.6, "return_std": 0.5,
                                    "episodes": 10},
                  "evaluations": [{"step": 500, "return_mean": 3.0, "return_std": 1.0,
                                   "episodes": 10, "exploration_rate": 0.5},
                                  {"step": 1000, "return_mean": 12.0, "return_std": 2.0,
                                   "episodes": 10, "exploration_rate": 0.1}]}  # fmt: skip
    (rec / "collection.json").write_text(json.dumps(collection))
    bench = tmp_path / "results" / "benchmarks"
    bench.mkdir(parents=True)
    record = {"about": "Ten episodes.", "command": "python benchmarks/x.py --episodes 10",
              "date": "2026-12-07 17:00 UTC", "machine": "a CPU, 2 cores, GPU none",
              "bf16_flags": "none", "threads": 1, "columns": ["evaluator", "seconds"],
              "rows": [["sequential", "8.08"], ["vectorised", "1.22"]],
              "versions": {"unicomp_version": "0.1.0", "git_commit": "abcdef1234567890",
                           "git_dirty": False, "torch": "2.13.0"}}  # fmt: skip
    (bench / "x.json").write_text(json.dumps(record))
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "p.md"
    doc.write_text(
        "<!-- unicomp:collection results/m/atari/breakout -->\n<!-- /unicomp:collection -->\n"
        "<!-- unicomp:benchmark results/benchmarks/x.json -->\n<!-- /unicomp:benchmark -->\n"
    )
    update_documents(tmp_path)
    text = doc.read_text()
    assert "`MinAtar/Breakout-v1`, dqn-replay: 1,000 transitions in 40 episodes" in text
    assert "reference scores 0.60 (random) and 12.00 (the final agent)" in text
    assert "| random policy | 0.60 ± 0.50 | 10 |  |" in text
    assert "| 1,000 | 12.00 ± 2.00 | 10 | 0.1 |" in text
    assert "| sequential | 8.08 |" in text and "| vectorised | 1.22 |" in text
    assert "Measured with `python benchmarks/x.py --episodes 10` on 2026-12-07 17:00 UTC" in text
    assert "(commit abcdef123456)" in text
    assert update_documents(tmp_path, check=True) == []
    record["rows"][1][1] = "1.30"  # the record changes (a re-run): the page must follow
    (bench / "x.json").write_text(json.dumps(record))
    assert update_documents(tmp_path, check=True) == [doc]
