"""``unicomp reproduce``: the tiny preset end to end (every claim gets a measured row and a
verdict; a re-run trains nothing), and its HTML report rendered in a real headless Chromium
(tables and images in the DOM, nothing loaded from elsewhere, a screenshot saved)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from unicomp.cli import main
from unicomp.errors import UnicompError
from unicomp.reports.reproduce import CLAIM_NAMES, reproduce
from unicomp.reports.verdicts import MISSING, NOT_MEASURED


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "tiny"
    said: list[str] = []
    report = reproduce("tiny", out, jobs=2, say=said.append)
    return out, report, said


def test_tiny_preset_measures_every_claim(tiny):
    out, report, said = tiny
    saved = json.loads((out / "claims.json").read_text())
    assert [r["claim"] for r in saved["claims"]] == list(CLAIM_NAMES)
    for row in saved["claims"]:
        if row["claim"].startswith("atari-") and row["verdict"] == MISSING:
            # a DQN of 400 steps rarely beats the random policy: then its data set has no
            # scale to normalise by, and the claim says so
            assert "no reference scores" in row["reason"], row
            continue
        # every claim has its figures (the tiny preset runs every experiment), and none is
        # decided: the tiny preset checks the machinery
        assert row["verdict"] == NOT_MEASURED, row
        assert "decide nothing" in row["reason"] and row["ours"] != "-", row
        assert "[budget " in row["ours"] or "% of the paper's budget" in row["ours"], row
    md = (out / "report.md").read_text()
    assert "| claim | paper's figure | ours [budget: fraction of the paper's] | verdict |" in md
    for name in CLAIM_NAMES:
        assert re.search(rf"^\| {re.escape(name)}: .*\| (not measured|missing) \|", md, re.M)
    assert "holds" not in md.replace("'holds' and", "")
    assert saved["versions"]["torch"] and saved["machine"] and saved["date"]
    run = json.loads((out / "run.json").read_text())
    assert run["calls"] == 1 and run["wall_seconds"] > 0 and run["runs"] == 18 + 9
    # every figure is a PNG in the output folder, linked to run folders that exist
    assert {"fpt-0", "fpt-1", "size-0", "attention", "dt-bars", "dt-targets"} <= set(
        saved["figures"]
    )
    assert "perceiver-bars" in saved["figures"] and "atari-bars" in saved["figures"]
    for fig in saved["figures"].values():
        assert (out / fig["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert fig["runs"] and all((out / r / "metrics.json").is_file() for r in fig["runs"])
        assert fig["command"].startswith("unicomp ")
    # the DT was evaluated at both target returns (the return-against-target figure)
    dt = json.loads((out / "dt" / "dt" / "s0" / "metrics.json").read_text())
    assert sorted(e["target_return"] for e in dt["eval"]) == [0.0, 1.0]


def test_a_rerun_skips_every_finished_run(tiny):
    out, first, _ = tiny
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    # FPT rows, size rows, DT runs, Perceivers; MinAtar: 3 rows x 2 rates on seed 0, + seed 1
    assert len(mtimes) == 10 + 2 + 4 + 2 + 9
    said: list[str] = []
    again = reproduce("tiny", out, jobs=2, say=said.append)
    runs = [line for line in said
            if re.match(r"(\[\d+/\d+\] )?(fpt|size|dt|perceiver|atari)/", line)]  # fmt: skip
    assert runs and all("skipped" in line for line in runs), said
    assert not any("collecting" in line or "training a DQN" in line for line in said)
    assert sum(line.startswith("atari/") for line in said) == 9
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == mtimes
    assert [r["ours"] for r in again["claims"]] == [r["ours"] for r in first["claims"]]
    # a call that trained nothing leaves the record of the time the runs took alone
    assert json.loads((out / "run.json").read_text())["calls"] == 1


def test_report_only_regenerates_the_report_from_records_alone(tiny, tmp_path, monkeypatch):
    """Records without weights, copied to another folder: the same claims, byte for byte."""
    out, _, _ = tiny
    copy = tmp_path / "results" / "tiny"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "logs"))
    monkeypatch.chdir(tmp_path)
    again = reproduce("tiny", copy, report_only=True, say=lambda _: None)
    saved = json.loads((out / "claims.json").read_text())
    assert again["claims"] == saved["claims"]
    assert not list(copy.rglob("*.safetensors"))  # nothing was trained
    # a record that was removed is reported missing, not silently dropped
    shutil.rmtree(copy / "perceiver")
    gone = reproduce("tiny", copy, claims="perceiver-io", report_only=True, say=lambda _: None)
    assert gone["claims"][0]["verdict"] == "missing"
    with pytest.raises(UnicompError, match="holds no run records"):
        reproduce("tiny", tmp_path / "nothing", report_only=True)


def test_one_claim_runs_only_what_it_needs(tmp_path):
    said: list[str] = []
    report = reproduce("tiny", tmp_path / "one", claims="perceiver-io", say=said.append)
    assert [r["claim"] for r in report["claims"]] == ["perceiver-io"]
    assert not (tmp_path / "one" / "fpt").exists() and not (tmp_path / "one" / "dt").exists()


def test_bad_claims_and_presets_are_one_line_errors(tmp_path, capsys):
    assert main(["reproduce", "--preset", "tiny", "--claims", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown nope" in err and "fpt-vs-full" in err
    with pytest.raises(SystemExit):
        main(["reproduce", "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_quick_and_paper_presets_build_valid_configs(tmp_path, name, capsys):
    """Every run of the bigger presets is a valid config (listed, nothing trained)."""
    assert main(["reproduce", "--preset", name, "--out", str(tmp_path), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "smollm2-135m" in listed and "lstm:3x" in listed
    assert "dt/dt-k1/s0" in listed and "perceiver/perceiver-io/s0" in listed
    assert not (tmp_path / "fpt").exists()


# --- the HTML page in a real browser ---------------------------------------------------------
_RESOURCE = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("no Chromium: install it (apt-get install -y chromium; scripts/setup.sh --dev)")


def _browse(html: Path, *flags: str) -> subprocess.CompletedProcess:
    # networking blocked: every host resolves nowhere and every request goes to a dead proxy
    offline = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", *offline, *flags]
    return subprocess.run(
        [*argv, html.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )


def test_the_html_report_renders_in_chromium_self_contained(tiny, tmp_path):
    out, report, _ = tiny
    page = out / "report.html"
    text = page.read_text()
    assert not _RESOURCE.search(text), _RESOURCE.search(text)
    assert "url(" not in text and "@import" not in text and "<script" not in text
    assert text.count("src='data:image/png;base64,") == len(report["figures"])

    dom = _browse(page, "--dump-dom").stdout
    assert dom.count("<table") == 2  # the run's facts, the claims
    assert dom.count("<img") == len(report["figures"]) >= 8
    claims_table = dom[dom.index("<th>claim</th>") :]
    for name in CLAIM_NAMES:
        assert f"<td>{name}: " in claims_table
    for row in report["claims"]:
        assert f">{row['verdict']}</td>" in claims_table

    shot = tmp_path / "report.png"
    _browse(page, f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
