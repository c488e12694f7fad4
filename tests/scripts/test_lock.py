"""scripts/lock.py reproduces every committed lock byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT, SHARED_DIR

GENERATED = ("dap.txt", "airflow-3.3.1.txt", "airflow-3.2.1.txt")


def test_lock_script_reproduces_committed_locks(tmp_path: Path):
    locks = tmp_path / "locks"
    locks.mkdir()
    for name in GENERATED:
        # The previous lock is an input (it keeps the pins no pins file decides); the marker shows the
        # script really rewrote the file.
        (locks / name).write_text((REPO_ROOT / "locks" / name).read_text() + "# stale\n")

    mwaa = SHARED_DIR / "mwaa"
    runs = [["dap"]] + [
        [
            "airflow",
            "--version",
            version,
            "--constraints",
            str(mwaa / f"constraints-{version}-3.12.txt"),
            "--essential",
            str(mwaa / f"mwaa-essential-constraints-{version}.txt"),
        ]
        for version in ("3.3.1", "3.2.1")
    ]
    script = REPO_ROOT / "scripts" / "lock.py"
    runs = [
        subprocess.Popen([sys.executable, str(script), "--locks-dir", str(locks), *args]) for args in runs
    ]
    assert [run.wait() for run in runs] == [0, 0, 0]

    for name in GENERATED:
        assert (locks / name).read_bytes() == (REPO_ROOT / "locks" / name).read_bytes(), name
