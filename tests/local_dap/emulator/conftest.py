"""Fixtures for the emulator's own tests: a running emulator and runners for the real client."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

import pytest

from local_dap.control import EmulatorProcess, start_emulator
from tests.support.paths import DAP_BIN, DAP_PYTHON, REPO_ROOT


@pytest.fixture
def emulator() -> EmulatorProcess:
    """A fresh emulator (30 base rows per table, jobs complete at once)."""
    with start_emulator(rows=30) as running:
        yield running


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float = 0.0


def run_dap(emulator: EmulatorProcess, *args: str, timeout: float = 180, **env: str) -> Outcome:
    """Run the real ``dap`` CLI against the emulator (credentials via the environment)."""
    import time

    started = time.monotonic()
    result = subprocess.run(
        [str(DAP_BIN / "dap"), "--non-interactive", "--no-tracking", *args],
        env=emulator.client_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    return Outcome(result.returncode, result.stdout + result.stderr, time.monotonic() - started)


def run_library(
    emulator: EmulatorProcess, action: str, namespace: str, table: str, database_url: str
) -> dict:
    """Run the real ``SQLReplicator`` (``init``/``sync``/``drop``) in its own process; its JSON result."""
    result = subprocess.run(
        [str(DAP_PYTHON), "-m", "local_dap.emulator.replicate", action, namespace, table],
        env=emulator.client_env(DAP_CONNECTION_STRING=database_url),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from replicate ({result.returncode}): {result.stderr[-2000:]}"
    return json.loads(lines[-1])
