"""The environments the Makefile built are the locked ones, and the dap client lives only in its own."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import airflow

from tests.support import venv
from tests.support.paths import DAP_BIN, DAP_PYTHON, REPO_ROOT

# What requirements/test.txt adds to the Airflow environment (the test runner and its libraries).
TEST_RUNNER = set(venv.lock_pins(REPO_ROOT / "requirements" / "test.txt"))


def test_dap_environment_runs_the_real_dap_cli():
    result = subprocess.run([str(DAP_BIN / "dap"), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "dap 2.3.1"


def test_dap_environment_is_exactly_its_lock():
    installed = venv.freeze(DAP_PYTHON)
    for tool in ("pip", "setuptools", "wheel"):
        installed.pop(tool, None)
    assert installed == venv.lock_pins(REPO_ROOT / "locks" / "dap.txt")


def test_airflow_environment_is_its_lock_without_the_dap_client():
    lock = REPO_ROOT / "locks" / f"airflow-{airflow.__version__}.txt"
    locked = venv.lock_pins(lock)
    locked.pop("psycopg2")  # not built locally (see the Makefile)
    installed = venv.freeze(Path(sys.executable))
    extra = set(installed) - set(locked) - TEST_RUNNER - {"pip", "setuptools", "wheel"}
    assert {name: installed.get(name) for name in locked} == locked
    assert extra == set()
    assert "instructure-dap-client" not in installed
    assert importlib.util.find_spec("dap") is None
