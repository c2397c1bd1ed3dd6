"""Tasks from other packages: a ``unicomp.tasks`` entry point adds a task that the CLI trains and
re-runs from its config.yaml; a clash with a built-in task is a one-line error naming both;
``unicomp.register_task`` adds one from Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

# A user's package: a TensorTask on generated data (the class of a token's sign).
_PACKAGE = '''
"""Their own task, in their own package."""

import torch

from unicomp.tasks.base import Batch, TaskSpec, TensorTask


class Sign(TensorTask):
    """Is the first of ``length`` numbers positive? Fixed examples from a seeded generator."""

    name = "their-sign"

    def __init__(self, length: int = 4):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(96, length, 1, generator=gen)
        y = (x[:, 0, 0] > 0).long()
        self.spec = TaskSpec(max_len=length, d_in=1, d_out=2, n_classes=2)
        self.data = {
            "train": Batch(x[:64], y[:64]),
            "val": Batch(x[64:80], y[64:80]),
            "test": Batch(x[80:], y[80:]),
        }
        self.data_source = f"generated: 96 sequences of {length} numbers (their package)"
'''

_FAST = ["--backbone", "random:minilm-l6", "--backbone-layers", "1", "--steps", "2"]
_FAST += ["--eval-every", "2", "--batch-size", "4", "--precision", "fp32"]
_FAST += ["--attn-implementation", "eager", "--no-progress"]


def _install(site: Path, entry_points: str, dist: str = "their_tasks-0.1") -> Path:
    """The package ``their_tasks`` and a ``<dist>.dist-info`` folder (METADATA and
    entry_points.txt) in ``site``, as pip would leave them; ``site`` goes on PYTHONPATH."""
    (site / "their_tasks").mkdir(parents=True, exist_ok=True)
    (site / "their_tasks" / "__init__.py").write_text(_PACKAGE)
    info = site / f"{dist}.dist-info"
    info.mkdir()
    name, version = dist.split("-")
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
    )
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


def _env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_an_entry_point_task_trains_and_reruns_from_its_config(tmp_path):
    site = _install(tmp_path / "site", "[unicomp.tasks]\nsign = their_tasks:Sign\n")
    env = _env(site)
    listed = run_cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "sign" in listed.stdout and "from package their-tasks" in listed.stdout

    out = tmp_path / "run"
    proc = run_cli("fpt", "train", "--task", "sign", "--task-arg", "length=5", *_FAST,
                   "--out", str(out), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = json.loads((out / "metrics.json").read_text())
    assert first["data_source"] == "generated: 96 sequences of 5 numbers (their package)"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["task"], saved["task_args"]) == ("sign", {"length": 5})

    # Plain `unicomp` (the console script), from the saved config alone.
    again = tmp_path / "again"
    unicomp = Path(sys.executable).parent / "unicomp"
    cmd = [str(unicomp), "fpt", "train", "--config", str(out / "config.yaml"), "--out", str(again)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stderr
    second = json.loads((again / "metrics.json").read_text())
    assert yaml.safe_load((again / "config.yaml").read_text())["task"] == "sign"
    for key in ("data_source", "steps", "test_accuracy", "val_accuracy", "trainable_params"):
        assert second[key] == first[key], key


def test_an_entry_point_named_like_a_built_in_task_is_one_line_naming_both(tmp_path):
    site = _install(tmp_path / "site", "[unicomp.tasks]\nbit-xor = their_tasks:Sign\n")
    proc = run_cli("fpt", "train", "--task", "bit-xor", *_FAST, "--out", str(tmp_path / "r"),
                   env=_env(site))  # fmt: skip
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "their_tasks:Sign (from package their-tasks)" in message
    assert "the built-in task (unicomp.tasks.bits:BitXOR)" in message
    assert not (tmp_path / "r").exists()


def test_two_packages_claiming_one_name_is_one_line_naming_both(tmp_path, monkeypatch):
    from unicomp.tasks import catalog

    site = _install(tmp_path / "site", "[unicomp.tasks]\nsign = their_tasks:Sign\n")
    info = site / "other_tasks-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-tasks\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[unicomp.tasks]\nsign = other_tasks:Sign\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(catalog, "_entry_points_read", False)
    with pytest.raises(catalog.UnicompError, match=r"^task 'sign': .* clashes with ") as err:
        catalog.TASKS.names()
    assert "their_tasks:Sign" in str(err.value) and "other_tasks:Sign" in str(err.value)
    assert "sign" not in catalog.TASKS._entries  # all or none


def test_register_task_from_python(monkeypatch):
    import unicomp
    from unicomp.errors import UnicompError
    from unicomp.tasks import catalog
    from unicomp.tasks.bits import BitXOR

    assert "bit-xor" in catalog.TASKS  # the catalogue loaded, so the copy below holds it
    monkeypatch.setattr(catalog.TASKS, "_entries", dict(catalog.TASKS._entries))
    unicomp.register_task("my-xor", BitXOR, help="XOR, under my name")
    assert unicomp.TASKS.entry("my-xor").load() is BitXOR
    with pytest.raises(UnicompError, match=r"^task 'bit-memory' is already registered \(unicomp"):
        unicomp.register_task("bit-memory", "their_tasks:Sign")
