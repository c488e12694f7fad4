"""A throwaway Airflow deployment run as production runs it, for tests and benchmarks.

``airflow dags test`` runs tasks one at a time in one process; concurrency, pacing, worker slots, retry
timing and the UI's clear path only show on a real deployment. This one has a PostgreSQL metadata
database (a fresh database on a :mod:`local_dap.postgres` server), the LocalExecutor, and ``airflow
api-server``, ``airflow scheduler`` and ``airflow dag-processor`` as subprocesses, with AIRFLOW_HOME in a
temporary folder and this repo's ``dags/`` and ``plugins/``. Connections and the ``cd2_config`` Variable
are ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` environment variables. It is driven through ``/api/v2`` with a
token from the simple auth manager (``POST /auth/token`` with a user and password of our own)::

    with Deployment.start(server, connections=..., config=...) as airflow:
        airflow.unpause()
        run_id = airflow.trigger(conf={"tables": ["canvas.users"]})
        assert airflow.wait_for_run(run_id) == "success"
        airflow.clear(run_id, [("table.sync", 0)])
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from local_dap.airflow_home import AIRFLOW_BIN, DAG_ID, _run_env, write_retry_delay_policy
from local_dap.paths import DAP_PYTHON, REPO_ROOT
from local_dap.postgres import PostgresServer
from local_dap.processes import free_loopback_port

FINISHED_RUN_STATES = frozenset({"success", "failed"})
ADMIN_USER = "admin"
COMPONENTS = ("api-server", "scheduler", "dag-processor")
# The cookie the Airflow UI keeps its token in (base_auth_manager.COOKIE_NAME_JWT_TOKEN).
TOKEN_COOKIE = "_token"


class DeploymentError(RuntimeError):
    """A component did not start, the API refused a request, or a wait timed out."""


@dataclass(frozen=True)
class TaskInstance:
    """One task instance as ``/api/v2`` lists it."""

    task_id: str
    map_index: int
    label: str | None
    state: str | None
    try_number: int
    start_date: str | None = None
    end_date: str | None = None


def dag_ids(instances: Sequence[str]) -> list[str]:
    """The DAG of each instance, as the DAG file names them (:mod:`cd2.instances`)."""
    from cd2.instances import instances_from  # plugins/ is on the path of the tests that pass instances

    return [instance.dag_id for instance in instances_from(",".join(instances))] if instances else [DAG_ID]


class Deployment:
    """A running deployment: its home, its environment, its API."""

    def __init__(self, home: Path, env: dict[str, str], api_url: str, password: str) -> None:
        self.home = home
        self.env = env
        self.api_url = api_url
        self._password = password
        self._token: str | None = None
        self.processes: dict[str, subprocess.Popen] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def start(
        cls,
        server: PostgresServer,
        *,
        connections: Mapping[str, Mapping[str, Any] | str],
        config: Mapping[str, Any] | None = None,
        variables: Mapping[str, Mapping[str, Any]] | None = None,
        instances: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        parallelism: int = 16,
        pools: Mapping[str, int] | None = None,
        retry_delay: timedelta | None = None,
        timeout: float = 180,
    ) -> Iterator[Deployment]:
        """Create the metadata database and home, migrate, start the three components, wait for the DAGs.

        ``instances`` sets ``[cd2] instances`` (none: the one default instance); ``variables`` are more
        Variables (an instance's ``cd2_config_NAME``) beside ``config``, the ``cd2_config`` Variable.
        ``retry_delay`` replaces every task's retry delay (a cluster policy in this home only), so a
        test sees a retry without waiting the DAG's minutes.
        """
        home = Path(tempfile.mkdtemp(prefix="cd2-deployment-"))
        if retry_delay is not None:
            write_retry_delay_policy(home, retry_delay)
        database = "airflow_" + secrets.token_hex(4)
        metadata_url = server.create_database(database).replace("postgresql://", "postgresql+psycopg2://", 1)
        port = free_loopback_port()
        api_url = f"http://127.0.0.1:{port}"
        password = secrets.token_urlsafe(16)
        (home / "passwords.json").write_text(json.dumps({ADMIN_USER: password}))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DAP_"))}
        base |= {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__WORKERS": "1",
            # 64 bytes at least: PyJWT warns on a shorter HMAC key for SHA512.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            # The LocalExecutor's log server (task logs while a task runs): 8793 may be another deployment's.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_loopback_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Only triggered runs: a schedule would add a run of its own when the DAG is unpaused.
            "AIRFLOW__CD2__SCHEDULE": "",
            "CD2_DAP_PYTHON": str(DAP_PYTHON),
        }
        base |= _run_env(connections, config, variables) | dict(env or {})
        if instances:
            base["AIRFLOW__CD2__INSTANCES"] = ",".join(instances)
        deployment = cls(home, base, api_url, password)
        try:
            deployment._airflow(["db", "migrate"])
            for component in COMPONENTS:
                deployment._spawn(component)
            deployment._wait_for_api(timeout)
            for name, slots in (pools or {}).items():
                deployment.set_pool(name, slots)
            for dag_id in dag_ids(instances):
                deployment.wait_for_dag(dag_id, timeout=timeout)
            yield deployment
        finally:
            deployment.stop()
            shutil.rmtree(home, ignore_errors=True)
            conn = server.connect()
            try:
                conn.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            finally:
                conn.close()

    def _airflow(self, args: list[str], timeout: float = 300) -> str:
        completed = subprocess.run(
            [str(AIRFLOW_BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if completed.returncode != 0:
            raise DeploymentError(
                f"airflow {' '.join(args)} failed:\n{completed.stdout[-4000:]}{completed.stderr[-4000:]}"
            )
        return completed.stdout

    def _spawn(self, component: str) -> None:
        log = open(self.home / f"{component}.log", "wb")  # noqa: SIM115 (kept open by the child)
        self.processes[component] = subprocess.Popen(
            [str(AIRFLOW_BIN), component],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it with all its workers
        )
        log.close()

    def component_log(self, component: str) -> str:
        """What ``airflow <component>`` printed so far."""
        return (self.home / f"{component}.log").read_text(errors="replace")

    def stop(self, grace_seconds: float = 20) -> None:
        """SIGTERM each component's process group, SIGKILL what is left after ``grace_seconds``."""
        for process in self.processes.values():
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # stragglers of the group (task processes) too
            process.wait()

    def _check_alive(self) -> None:
        for component, process in self.processes.items():
            if process.poll() is not None:
                raise DeploymentError(
                    f"airflow {component} exited ({process.returncode}):\n{self.component_log(component)[-4000:]}"
                )

    # -- the API ----------------------------------------------------------------------------------

    def _wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                self._token = self._login()
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise DeploymentError(f"the API server did not answer in {timeout:g} s") from None
                time.sleep(0.5)

    def token(self) -> str:
        """A fresh token for the admin user (a ``Bearer`` header, or the UI's ``_token`` cookie)."""
        return self._login()

    def _login(self) -> str:
        body = json.dumps({"username": ADMIN_USER, "password": self._password}).encode()
        request = urllib.request.Request(
            f"{self.api_url}/auth/token", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def api(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None) -> Any:
        """Call ``/api/v2/<path>``; the decoded JSON answer, or :class:`DeploymentError` with its text."""
        url = f"{self.api_url}/api/v2/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            request = urllib.request.Request(url, data, method=method)
            request.add_header("Authorization", f"Bearer {self._token}")
            request.add_header("Accept", "application/json")
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    text = response.read().decode()
                    return json.loads(text) if text else None
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 1:
                    self._token = self._login()
                    continue
                raise DeploymentError(
                    f"{method} {path}: HTTP {error.code}: {error.read().decode()}"
                ) from None
        raise AssertionError("unreachable")

    def fetch(self, path: str, *, auth: str | None = "bearer") -> tuple[int, dict[str, str], str]:
        """GET ``<api_url>/<path>`` as a browser or client would, not following redirects: its status,
        headers (lower-case names) and text. ``auth``: ``"bearer"`` (a token header), ``"cookie"`` (the UI's ``_token``
        cookie, as a signed-in browser sends it) or None (signed out)."""
        request = urllib.request.Request(f"{self.api_url}/{path}", method="GET")
        if auth == "bearer":
            request.add_header("Authorization", f"Bearer {self.token()}")
        elif auth == "cookie":
            request.add_header("Cookie", f"{TOKEN_COOKIE}={self.token()}")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, _headers(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, _headers(error.headers), error.read().decode()

    def wait_for_dag(self, dag_id: str = DAG_ID, timeout: float = 180) -> dict:
        """Wait until the dag-processor has parsed ``dag_id``; raise naming import errors if any."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                return self.api("GET", f"dags/{dag_id}")
            except DeploymentError:
                errors = self.api("GET", "importErrors").get("import_errors", [])
                if errors:
                    raise DeploymentError(f"DAG import errors: {errors}") from None
                if time.monotonic() > deadline:
                    raise DeploymentError(f"DAG {dag_id} not parsed after {timeout:g} s") from None
                time.sleep(1)

    def set_pool(self, name: str, slots: int) -> None:
        """Create or resize pool ``name``."""
        try:
            self.api("PATCH", f"pools/{name}", {"name": name, "slots": slots})
        except DeploymentError:
            self.api("POST", "pools", {"name": name, "slots": slots})

    def unpause(self, dag_id: str = DAG_ID) -> None:
        self.api("PATCH", f"dags/{dag_id}", {"is_paused": False})

    def trigger(self, conf: Mapping[str, Any] | None = None, dag_id: str = DAG_ID) -> str:
        """Trigger a run with ``conf``; its run id."""
        run = self.api("POST", f"dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        return run["dag_run_id"]

    def run_state(self, run_id: str, dag_id: str = DAG_ID) -> str:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_for_run(self, run_id: str, timeout: float = 600, dag_id: str = DAG_ID) -> str:
        """Poll until the run has finished; its final state."""
        deadline = time.monotonic() + timeout
        while (state := self.run_state(run_id, dag_id)) not in FINISHED_RUN_STATES:
            self._check_alive()
            if time.monotonic() > deadline:
                raise DeploymentError(f"run {run_id} still {state} after {timeout:g} s")
            time.sleep(1)
        return state

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[TaskInstance]:
        """Every task instance of the run (mapped ones with their ``rendered_map_index``)."""
        found: list[TaskInstance] = []
        while True:
            page = self.api(
                "GET",
                f"dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                query={"limit": 100, "offset": len(found), "order_by": "id"},
            )
            found += [
                TaskInstance(
                    ti["task_id"],
                    ti["map_index"],
                    ti.get("rendered_map_index"),
                    ti["state"],
                    ti["try_number"],
                    ti.get("start_date"),
                    ti.get("end_date"),
                )
                for ti in page["task_instances"]
            ]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return sorted(found, key=lambda ti: (ti.task_id, ti.map_index))

    def tries(self, run_id: str, task_id: str, map_index: int = -1, dag_id: str = DAG_ID) -> list[dict]:
        """One task instance's try history (earlier tries and the current one), as the UI lists it."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return self.api("GET", path)["task_instances"]

    def clear(
        self,
        run_id: str,
        task_ids: Sequence[str | tuple[str, int]],
        *,
        include_downstream: bool = True,
        only_failed: bool = False,
        dag_id: str = DAG_ID,
    ) -> list[dict]:
        """Clear task instances as the UI's Clear does (``clearTaskInstances``); the cleared ones."""
        answer = self.api(
            "POST",
            f"dags/{dag_id}/clearTaskInstances",
            {
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": [list(t) if isinstance(t, tuple) else t for t in task_ids],
                "include_downstream": include_downstream,
                "only_failed": only_failed,
                "reset_dag_runs": True,
            },
        )
        return answer["task_instances"]

    def task_log(
        self, run_id: str, task_id: str, try_number: int, map_index: int = -1, dag_id: str = DAG_ID
    ) -> str:
        """The text of one try's task log, as the UI shows it."""
        return "\n".join(
            record.get("event", "")
            for record in self.task_log_records(run_id, task_id, try_number, map_index, dag_id)
        )

    def task_log_records(
        self, run_id: str, task_id: str, try_number: int, map_index: int = -1, dag_id: str = DAG_ID
    ) -> list[dict]:
        """One try's task log as its records (``event``, ``level``, ``logger``, ``timestamp``...)."""
        answer = self.api(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            query={"map_index": map_index, "full_content": "true"},
        )
        content = answer.get("content", [])
        if isinstance(content, str):
            return [{"event": line} for line in content.splitlines()]
        return [item if isinstance(item, dict) else {"event": str(item)} for item in content]

    # -- measuring ----------------------------------------------------------------------------------

    def sample_cpu(self, interval: float = 0.5) -> CpuSampler:
        """A started :class:`CpuSampler` over this deployment's process groups."""
        sampler = CpuSampler([p.pid for p in self.processes.values()], interval)
        sampler.start()
        return sampler


class CpuSampler(threading.Thread):
    """CPU seconds of every process in the given sessions, split into Airflow and DAP child processes.

    Samples ``/proc`` every ``interval`` (a process that lives shorter than that is missed). Each
    process's last seen ``utime + stime`` counts, keyed by (pid, start time).
    """

    CHILD_MARK = "cd2.dap_child"

    def __init__(self, sessions: Sequence[int], interval: float) -> None:
        super().__init__(daemon=True)
        self.sessions = set(sessions)
        self.interval = interval
        self.seen: dict[tuple[int, int], tuple[bool, float]] = {}
        self._stop_event = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[3]) not in self.sessions:  # field 6: session id
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            seconds = (int(fields[11]) + int(fields[12])) / self._tick
            self.seen[(int(entry), int(fields[19]))] = (self.CHILD_MARK.encode() in cmdline, seconds)

    def stop(self) -> dict[str, float]:
        """Stop sampling; ``{"airflow": s, "dap_child": s}``."""
        self._stop_event.set()
        self.join()
        self._sample()
        totals = {"airflow": 0.0, "dap_child": 0.0}
        for is_child, seconds in self.seen.values():
            totals["dap_child" if is_child else "airflow"] += seconds
        return totals


def _headers(message: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in message.items()}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
