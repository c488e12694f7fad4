"""Build throwaway virtualenvs the way MWAA and the Makefile do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# Python 3.12: the interpreter running the tests (the Airflow environment's) made the venvs here too.
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))


def create(path: Path) -> Path:
    """A fresh virtualenv at ``path``; returns its interpreter."""
    subprocess.run([str(BASE_PYTHON), "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> str:
    """Run pip in that environment; its output, or an assertion error carrying pip's output."""
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def freeze(python: Path) -> dict[str, str]:
    """Installed distributions as {canonical name: version}."""
    pins = {}
    for line in pip(python, "freeze", "--all").splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def lock_pins(lock: Path) -> dict[str, str]:
    """The ``name==version`` pins of a lock file."""
    return dict(re.findall(r"^([a-z0-9\-]+)==(\S+)", lock.read_text(), flags=re.M))
