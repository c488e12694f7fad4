"""A throwaway Airflow installation for tests: its own AIRFLOW_HOME, SQLite, this repo's dags and plugins.

``airflow dags test`` runs in a subprocess (``dag.test()`` inside pytest is broken on Airflow 3.1+).
Connections and the ``cd2_config`` Variable are passed as ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*``
environment variables; task states, XComs and logs are read back from the SQLite database and log folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from local_dap.paths import DAP_PYTHON, REPO_ROOT

AIRFLOW_PYTHON = Path(os.environ.get("CD2_AIRFLOW_PYTHON", sys.executable))
AIRFLOW_BIN = AIRFLOW_PYTHON.parent / "airflow"
DAG_ID = "cd2_replica"


@dataclass
class TaskInstanceRow:
    task_id: str
    map_index: int
    label: str | None
    state: str | None
    try_number: int = 0


@dataclass
class DagRunResult:
    """What one ``airflow dags test`` did: exit code, output, the run's state and its task instances."""

    returncode: int
    output: str
    run_id: str | None
    state: str | None
    tasks: list[TaskInstanceRow] = field(default_factory=list)

    def states(self, task_id: str) -> dict[str, str | None]:
        """``{label or map index: state}`` of one (mapped) task."""
        return {(ti.label or str(ti.map_index)): ti.state for ti in self.tasks if ti.task_id == task_id}

    def state_of(self, task_id: str) -> str | None:
        return next(ti.state for ti in self.tasks if ti.task_id == task_id and ti.map_index == -1)

    def tries(self, task_id: str) -> dict[str, int]:
        """``{label or map index: try number}`` of one (mapped) task: how many tries it took."""
        return {(ti.label or str(ti.map_index)): ti.try_number for ti in self.tasks if ti.task_id == task_id}


class AirflowEnvironment:
    """An AIRFLOW_HOME in a temporary folder, migrated once; runs the Airflow CLI against it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.database = home / "airflow.db"
        self.last_peak_rss_mb = 0.0

    @classmethod
    def create(cls, *, retry_delay: timedelta | None = None) -> AirflowEnvironment:
        """A migrated home; ``retry_delay`` replaces every task's (see :func:`write_retry_delay_policy`)."""
        environment = cls(Path(tempfile.mkdtemp(prefix="cd2-airflow-")))
        if retry_delay is not None:
            write_retry_delay_policy(environment.home, retry_delay)
        environment.run(["db", "migrate"], check=True)
        return environment

    def remove(self) -> None:
        """Delete the whole AIRFLOW_HOME."""
        shutil.rmtree(self.home, ignore_errors=True)

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DAP_"))}
        env |= {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.database}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "CD2_DAP_PYTHON": str(DAP_PYTHON),
        }
        return env

    def run(
        self,
        args: list[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``airflow`` CLI; ``self.last_peak_rss_mb`` is then its peak memory (with its children)."""
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(
                [str(AIRFLOW_BIN), *args],
                env=self.base_env() | dict(env or {}),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                _, status, usage = _wait4(process, timeout)
            except BaseException:
                process.kill()
                process.wait()
                raise
            output.seek(0)
            text = output.read().decode(errors="replace")
        self.last_peak_rss_mb = usage.ru_maxrss / 1024
        completed = subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), text, "")
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({completed.returncode}):\n{completed.stdout[-8000:]}"
            )
        return completed

    def dags_test(
        self,
        *,
        connections: Mapping[str, Mapping[str, Any] | str],
        config: Mapping[str, Any] | None = None,
        conf: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> DagRunResult:
        """Run ``airflow dags test cd2_replica`` once with these connections, Variable and run conf."""
        before = set(self._run_ids())
        args = ["dags", "test", DAG_ID]
        if conf:
            args += ["--conf", json.dumps(conf)]
        completed = self.run(args, env=_run_env(connections, config) | dict(env or {}), timeout=timeout)
        new_runs = [run_id for run_id in self._run_ids() if run_id not in before]
        run_id = new_runs[-1] if new_runs else None
        return DagRunResult(
            returncode=completed.returncode,
            output=completed.stdout + completed.stderr,
            run_id=run_id,
            state=self._run_state(run_id) if run_id else None,
            tasks=self.task_instances(run_id) if run_id else [],
        )

    def tasks_test(
        self,
        task_id: str,
        run_id: str,
        *,
        map_index: int = -1,
        connections: Mapping[str, Mapping[str, Any] | str],
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one task instance of an existing run again (``airflow tasks test``), as clearing it does."""
        args = ["tasks", "test", DAG_ID, task_id, run_id, "--map-index", str(map_index)]
        return self.run(args, env=_run_env(connections, config) | dict(env or {}))

    # -- reading the metadata database --------------------------------------------------------------

    def _query(self, sql: str, *params: Any) -> list[tuple]:
        with sqlite3.connect(self.database) as db:
            return db.execute(sql, params).fetchall()

    def _run_ids(self) -> list[str]:
        return [
            row[0] for row in self._query("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id", DAG_ID)
        ]

    def _run_state(self, run_id: str) -> str | None:
        rows = self._query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
        return rows[0][0] if rows else None

    def task_instances(self, run_id: str) -> list[TaskInstanceRow]:
        rows = self._query(
            "SELECT task_id, map_index, rendered_map_index, state, try_number FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
            DAG_ID,
            run_id,
        )
        return [TaskInstanceRow(*row) for row in rows]

    def task_times(self, run_id: str) -> dict[tuple[str, int], tuple[str | None, str | None]]:
        """``{(task_id, map_index): (start_date, end_date)}`` of the run's task instances (ISO text)."""
        rows = self._query(
            "SELECT task_id, map_index, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ?",
            DAG_ID,
            run_id,
        )
        return {(task_id, index): (start, end) for task_id, index, start, end in rows}

    def asset_events(self, run_id: str) -> list[tuple[str, str, dict]]:
        """``(asset uri, source task_id, extra)`` of every asset event the run's tasks emitted."""
        rows = self._query(
            "SELECT asset.uri, asset_event.source_task_id, asset_event.extra FROM asset_event "
            "JOIN asset ON asset.id = asset_event.asset_id "
            "WHERE asset_event.source_dag_id = ? AND asset_event.source_run_id = ? ORDER BY asset.uri",
            DAG_ID,
            run_id,
        )
        return [(uri, task_id, json.loads(extra) if extra else {}) for uri, task_id, extra in rows]

    def xcoms(self, run_id: str) -> list[tuple[str, int, str, Any]]:
        """Every XCom of the run as ``(task_id, map_index, key, value)``."""
        rows = self._query(
            "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id
        )
        return [(task_id, index, key, _decode(value)) for task_id, index, key, value in rows]

    def xcom(self, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        for found_task, found_index, found_key, value in self.xcoms(run_id):
            if (found_task, found_index, found_key) == (task_id, map_index, key):
                return value
        return None

    def task_logs(self, run_id: str | None = None) -> str:
        """All task log text of the run (or of every run)."""
        texts = []
        for path in sorted((self.home / "logs").rglob("*")):
            if path.is_file() and (run_id is None or f"run_id={run_id}" in str(path)):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)


def dap_connection(emulator) -> dict[str, Any]:
    """The ``dap_default`` connection (JSON form) for a running DAP emulator."""
    return {
        "conn_type": "http",
        "host": emulator.base_url,
        "login": emulator.client_id,
        "password": emulator.client_secret,
    }


def postgres_connection(url: str) -> dict[str, Any]:
    """The ``cd2_postgres`` connection (JSON form) for a ``postgresql://`` URL; ``ssl``/``sslmode`` -> extra."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    sslmode = (query.get("sslmode") or query.get("ssl") or [None])[0]
    return {
        "conn_type": "postgres",
        "host": parts.hostname,
        "port": parts.port or 5432,
        "login": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "schema": unquote(parts.path.lstrip("/")),
        "extra": {"sslmode": sslmode} if sslmode else {},
    }


def _run_env(
    connections: Mapping[str, Mapping[str, Any] | str],
    config: Mapping[str, Any] | None,
    variables: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """Connections as ``AIRFLOW_CONN_*`` (JSON), the ``cd2_config`` Variable and any ``variables`` as
    ``AIRFLOW_VAR_*``."""
    env = {
        f"AIRFLOW_CONN_{conn_id.upper()}": value if isinstance(value, str) else json.dumps(value)
        for conn_id, value in connections.items()
    }
    if config is not None:
        env["AIRFLOW_VAR_CD2_CONFIG"] = json.dumps(config)
    for name, value in (variables or {}).items():
        env[f"AIRFLOW_VAR_{name.upper()}"] = json.dumps(value)
    return env


def write_retry_delay_policy(home: Path, retry_delay: timedelta) -> None:
    """An ``airflow_local_settings`` (``$AIRFLOW_HOME/config`` is on Airflow's path) whose task policy
    sets every task's ``retry_delay``: whatever parses the DAG (the dag-processor, ``airflow dags test``)
    applies it. It comes
    before ``plugins/airflow_local_settings.py`` on the path and runs that file, as MWAA's does."""
    (home / "config").mkdir()
    (home / "config" / "airflow_local_settings.py").write_text(
        "import runpy\n"
        "from datetime import timedelta\n\n"
        f"runpy.run_path({str(REPO_ROOT / 'plugins' / 'airflow_local_settings.py')!r})\n\n\n"
        "def task_policy(task):\n"
        f"    task.retry_delay = timedelta(seconds={retry_delay.total_seconds()!r})\n"
    )


def _wait4(process: subprocess.Popen, timeout: float):
    """``os.wait4`` with a timeout (rusage tells the peak memory, which ``Popen.wait`` does not)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(0.05)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
