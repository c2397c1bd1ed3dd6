"""Temporaries of the atomic writer (issue 14): a writer killed mid-write leaves
``.<name>.<random>.tmp``; writers remove such leftovers when they start (run folders, data
caches, ``dt collect`` output), never one a live writer holds, nor another program's file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from unicomp.files import atomic_write, atomic_write_text, sweep_temporaries, temporary_folder

# A writer that stops midway (until killed), as a separate process: its temporary is live.
_STUCK_WRITER = textwrap.dedent(
    """
    import sys, time
    from unicomp.files import atomic_write
    def write(f):
        f.write(b"x" * 1000)
        f.flush()
        print("writing", flush=True)
        time.sleep(600)
    atomic_write(sys.argv[1], write)
    """
)


def _stuck_writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "writing\n"
    return proc


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_live_writers_temporary_is_kept_and_swept_once_the_writer_is_killed(tmp_path):
    cache = tmp_path / "cache"
    writer = _stuck_writer(cache / "big.npz")
    try:
        (live,) = _temporaries(cache)
        assert live.startswith(".big.npz.")
        atomic_write(cache / "other.npz", lambda f: f.write(b"y"), own_folder=True)
        atomic_write(cache / "big.npz", lambda f: f.write(b"z"))  # a second writer of big.npz
        assert _temporaries(cache) == [live]  # both swept at their start; the live one stays
        assert (cache / "big.npz").read_bytes() == b"z"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert _temporaries(cache) == [live]  # what a kill leaves
    atomic_write(cache / "other.npz", lambda f: f.write(b"y"), own_folder=True)
    assert _temporaries(cache) == []


def test_only_the_writers_own_names_are_swept(tmp_path):
    """A plain write sweeps leftovers of its own file only; ``own_folder`` (caches) those of
    every name; files that do not follow the writer's naming are never touched."""
    foreign = [".data.tmp", "notes.tmp", ".tmp", "a.b.tmp", ".x.UPPER.tmp"]
    for name in [*foreign, ".metrics.json.abcd1234.tmp", ".curve.csv.q9_zz0aa.tmp"]:
        (tmp_path / name).write_text("left")
    atomic_write_text(tmp_path / "metrics.json", "{}")
    assert ".metrics.json.abcd1234.tmp" not in _temporaries(tmp_path)
    assert ".curve.csv.q9_zz0aa.tmp" in _temporaries(tmp_path)
    atomic_write_text(tmp_path / "notes.txt", "n")
    assert ".curve.csv.q9_zz0aa.tmp" in _temporaries(tmp_path)
    atomic_write(tmp_path / "cache.npz", lambda f: f.write(b"c"), own_folder=True)
    assert _temporaries(tmp_path) == sorted(foreign)


def test_a_killed_builders_temporary_folder_is_swept_by_the_next(tmp_path):
    """``temporary_folder`` (dt collect builds its data set in one): locked while in use,
    removed after, and a killed process's folder is removed by the next builder."""
    stale = tmp_path / ".data.k1ll3d00.tmp"
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "main_data.hdf5").write_bytes(b"\0" * 4096)
    with temporary_folder(tmp_path, "data") as tmp:
        assert not stale.exists()
        assert tmp.name.startswith(".data.") and tmp.is_dir()
        assert sweep_temporaries(tmp_path, "data") == []  # held by us: never removed
        assert tmp.is_dir()
    assert _temporaries(tmp_path) == []


def test_listops_cache_sweeps_leftovers_of_any_key(tmp_path, monkeypatch):
    from unicomp.tasks.listops import ListOps

    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path))
    folder = tmp_path / "listops"
    folder.mkdir()
    (folder / ".generated-0123456789abcdef.npz.zz99yy88.tmp").write_bytes(b"\0" * 1000)
    args = dict(source="generate", n_train=4, n_val=2, n_test=2, min_len=5, max_len=20)
    assert "cached in" in ListOps(**args).data_source
    assert _temporaries(folder) == []


def test_run_folder_start_uses_the_same_sweep(tmp_path):
    from unicomp.files import claim_run_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / ".checkpoint.pt.a1b2c3d4.tmp").write_bytes(b"\0" * 100)
    (run / "keep.tmp").write_text("not ours")
    with claim_run_folder(run, resume=False):
        assert _temporaries(run) == ["keep.tmp"]
