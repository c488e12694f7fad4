"""Run ``replicate_driver.py`` (the DAP client as our child runs it) on the DAP interpreter."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.paths import DAP_PYTHON

DRIVER = Path(__file__).resolve().parent / "replicate_driver.py"


def run_driver(
    emulator, database_url: str, operation: str, namespace: str, table: str, **settings: str
) -> dict:
    """Its ``DRIVER_RESULT``; ``settings`` are environment variables (e.g. ``CD2_STREAMING="0"``)."""
    env = emulator.client_env(CD2_REPLICA_URL=database_url, **settings)
    result = subprocess.run(
        [str(DAP_PYTHON), str(DRIVER), operation, namespace, table],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{settings} {operation} {namespace}.{table}:\n{result.stderr[-3000:]}"
    line = next(x for x in result.stdout.splitlines() if x.startswith("DRIVER_RESULT "))
    return json.loads(line.removeprefix("DRIVER_RESULT "))
