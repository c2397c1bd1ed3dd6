"""``dt collect`` when its output cannot be written (issue 14): a read-only or impossible
``--out`` and a write that fails midway (disk full; h5py then segfaulted, after printing 1,375
lines of tracebacks). Each is one ``unicomp: error:`` line and exit status 2, nothing of the
output folder changes, no temporary is left, and an unusable ``--out`` is refused before any
rollout."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

import unicomp.rl.collect as collect_module
from unicomp.cli import main
from unicomp.errors import UnicompError
from unicomp.files import write_in_child
from unicomp.rl.collect import write_collection
from unicomp.rl.minari_io import read_minari
from unicomp.rl.trajectories import Episode, TrajectoryDataset

pytest.importorskip("minari")

COLLECT = ["dt", "collect", "--env", "Pendulum-v1", "--policy", "random", "--n-envs", "2"]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _error_line(capfd) -> str:
    """stderr at the file-descriptor level (what a child process would print too): no
    traceback, and the last line is the one error."""
    err = capfd.readouterr().err
    assert "Traceback" not in err and "h5py" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("unicomp: error: "), lines[-5:]
    assert sum("error" in line for line in lines) == 1, lines
    return lines[-1]


def test_an_out_that_cannot_be_written_is_refused_before_any_rollout(tmp_path, capfd, monkeypatch):
    """Run as root, permissions do not stop a write: a path under a regular file cannot be
    created by anyone."""

    def no_rollouts(*args, **kwargs):
        raise AssertionError("rolled out before checking --out")

    monkeypatch.setattr(collect_module, "run_episodes", no_rollouts)
    (tmp_path / "afile").write_text("a file, not a folder\n")
    out = tmp_path / "afile" / "data"
    assert main([*COLLECT, "--episodes", "2", "--out", str(out)]) == 2
    line = _error_line(capfd)
    assert f"cannot write the data set in {out}: Not a directory" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _file_size_limit(limit: int):
    """write_minari with the file size limited to ``limit`` bytes: a write past it fails with
    EFBIG, as one past a full disk fails with ENOSPC, and h5py crashes alike."""
    real = collect_module.write_minari

    def limited(*args, **kwargs):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        return real(*args, **kwargs)

    return limited


def test_a_write_failing_midway_is_one_line_and_leaves_the_folder_as_it_was(
    tmp_path, capfd, monkeypatch
):
    """The real h5py writer, stopped 60 kB into the file: it fails, and usually segfaults
    afterwards (in the child process that unicomp.files.write_in_child runs it in; whether
    h5py crashes varies from run to run); the command reports one line either way."""
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    before = _listing(out)
    monkeypatch.setattr(collect_module, "write_minari", _file_size_limit(60_000))
    argv = [*COLLECT, "--episodes", "6", "--max-episode-steps", "200", "--out", str(out)]
    assert main(argv) == 2
    line = _error_line(capfd)
    assert f"could not write the data set in {out}: File too large" in line, line
    assert line.endswith("; nothing was written"), line
    assert _listing(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no temporary left
    monkeypatch.undo()  # the retry, with room, writes the data set
    stale = out / ".data.k1ll3d00.tmp"  # and removes what a killed collect left
    (stale / "data").mkdir(parents=True)
    assert main(argv) == 0
    assert not stale.exists()
    assert len(read_minari(out)) == 6 and (out / "collection.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["collection.json", "data", "notes.txt"]


def _dataset(episodes: int, steps: int = 200) -> TrajectoryDataset:
    rng = np.random.default_rng(0)

    def episode() -> Episode:
        done = np.zeros(steps, bool)
        done[-1] = True
        obs = rng.normal(size=(steps + 1, 3)).astype(np.float32)
        acts = rng.uniform(-2, 2, size=(steps, 1)).astype(np.float32)
        return Episode(obs, acts, rng.normal(size=steps), np.zeros(steps, bool), done)

    return TrajectoryDataset([episode() for _ in range(episodes)], env_id="Pendulum-v1")


@contextlib.contextmanager
def _tiny_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` (needs the right to mount: root in CI)."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A real full disk (a 1 MB tmpfs): the data set fits its arrays (0.7 MB, so the free
    space check lets it through) but not h5py's file; then one that is refused up front."""
    with _tiny_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "data"
        with pytest.raises(UnicompError) as err:
            write_collection(_dataset(100), out, {}, "test", "random", 0.0)
        message = str(err.value)
        assert f"could not write the data set in {out}: No space left on device" in message
        assert "\n" not in message
        assert list(out.iterdir()) == []  # no data, no collection.json, no temporary
        with pytest.raises(UnicompError, match=r"needs at least 2\.1 MB and .* MB free"):
            write_collection(_dataset(400), out, {}, "test", "random", 0.0)
        assert list(out.iterdir()) == []
        write_collection(_dataset(5), out, {}, "test", "random", 0.0)  # what fits, fits
        assert len(read_minari(out)) == 5


def test_write_in_child_passes_errors_back_as_one_line():
    def refuse():
        raise UnicompError("a message for the user")

    with pytest.raises(UnicompError, match="^a message for the user$"):
        write_in_child(refuse, "x")

    def crash():
        import os

        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(UnicompError, match=r"could not write x: the writer crashed \(SIGSEGV\)"):
        write_in_child(crash, "x")
    write_in_child(lambda: None, "x")  # success returns
