"""The load-and-fault test of ``unicomp serve``: benchmarks/serve_faults.py, run as is on a
tiny backbone. Eight clients on loopback while the adapter file under them is replaced by one
of the same size and mtime, truncated, garbled and restored, and extra adapters are added and
removed: every request answered (200 from one whole adapter, 404 for an absent extra, or 503),
no 500, the server's memory flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_adapters import adapter_runs  # noqa: F401

pytest.importorskip("httpx", reason="the serve extra: pip install unicomp[serve]")
pytest.importorskip("fastapi", reason="the serve extra: pip install unicomp[serve]")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_faults.py"


def _load_and_faults(adapter_runs, tiny_bert, tmp_path, seconds: float) -> dict:  # noqa: F811
    out = tmp_path / "serve-faults.json"
    cmd = [
        sys.executable, str(SCRIPT), "--backbone", tiny_bert,
        "--adapter", str(adapter_runs["files"] / "xor.safetensors"),
        "--clients", "8", "--seconds", str(seconds), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600 + seconds)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())["results"]
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert not failed, (failed, result["problems"], done.stdout[-2000:])
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout.split("\n{", 1)[0])  # the figures (pytest -s shows them)
    return result


def test_serve_under_load_while_its_adapter_files_change(adapter_runs, tiny_bert, tmp_path):  # noqa: F811
    """Four seconds of it (the folder changes about 40 times)."""
    result = _load_and_faults(adapter_runs, tiny_bert, tmp_path, seconds=4)
    assert result["status"].get("200", 0) > 50, result["status"]
    assert result["changes"]["flip"] >= 3 and result["changes"]["garbage"] >= 1, result
    assert set(result["status"]) <= {"200", "404", "503"}, result["status"]


@pytest.mark.slow
def test_serve_under_a_minute_of_load_while_its_adapter_files_change(
    adapter_runs,  # noqa: F811
    tiny_bert,
    tmp_path,
):
    result = _load_and_faults(adapter_runs, tiny_bert, tmp_path, seconds=60)
    assert result["status"].get("200", 0) > 1000, result["status"]
    assert set(result["status"]) <= {"200", "404", "503"}, result["status"]
