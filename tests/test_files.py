"""Atomic writes: a failed write leaves the previous file intact."""

from __future__ import annotations

import errno

import pytest

from unicomp.errors import UnicompError
from unicomp.files import atomic_write, atomic_write_text


def test_full_disk_keeps_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_text(path, "good")

    def fill_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UnicompError, match="No space left on device"):
        atomic_write(path, fill_disk)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_crash_during_write_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "{}")

    def crash(f):
        f.write(b"{broken")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "{}"
    assert len(list(tmp_path.iterdir())) == 1
