"""DapHook: runs the Instructure DAP client, one action per child process, on the DAP virtualenv's Python.

The client cannot share MWAA's Python environment, so each action runs as ``python -m cd2.dap_child`` on
the interpreter named by ``CD2_DAP_PYTHON``. Secrets reach the child only through its environment; its
log lines are relayed into the task log with secrets scrubbed; it reports one JSON result on a pipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cd2 import child_protocol as protocol
from cd2.connection_string import postgres_connection_string

DAP_PYTHON_ENV = "CD2_DAP_PYTHON"
DEFAULT_API_URL = "https://api-gateway.instructure.com"
# The folder holding the ``cd2`` package, put on the child's PYTHONPATH.
PLUGINS_DIR = Path(__file__).resolve().parents[2]
# Non-secret variables the child may need (certificates, proxies, locale, temp dir, reader switch).
PASSED_THROUGH = (
    "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "CD2_ACCELERATED_READER",
)  # fmt: skip
KILL_GRACE_SECONDS = 10
TAIL_LINES = 20


class DapTransientError(AirflowException):
    """The DAP action failed in a way a retry may fix (5xx, job processing error, connection reset)."""


class DapPermanentError(AirflowFailException):
    """The DAP action failed in a way only a fix can (credentials, account, unknown table, broken venv)."""


class DapHook(BaseHook):
    """Run DAP client actions against the ``dap_default`` API and the ``cd2_postgres`` database.

    :param dap_conn_id: host = API base URL, login = client id, password = client secret.
    :param postgres_conn_id: the target PostgreSQL; extra ``sslmode`` becomes the client's ``?ssl=``.
    :param dap_python: the DAP virtualenv's interpreter; defaults to ``$CD2_DAP_PYTHON``.
    """

    conn_name_attr = "dap_conn_id"
    default_conn_name = "dap_default"
    conn_type = "http"
    hook_name = "Canvas Data 2 (DAP API)"

    def __init__(
        self,
        *,
        dap_conn_id: str = default_conn_name,
        postgres_conn_id: str = "cd2_postgres",
        dap_python: str | None = None,
    ) -> None:
        super().__init__()
        self.dap_conn_id = dap_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.dap_python = dap_python
        self._child: subprocess.Popen | None = None
        self._secrets: list[str] = []

    # -- public actions -------------------------------------------------------------------------

    def list_tables(self, namespaces: list[str]) -> dict[str, list[str]]:
        """The tables of each namespace, as the API lists them."""
        args = [protocol.ACTION_LIST]
        for namespace in namespaces:
            args += ["--namespace", namespace]
        return self.run_child(args, with_database=False)["tables"]

    def sync_table(self, namespace: str, table: str, **options: Any) -> dict[str, Any]:
        """Synchronize one table, or report ``init_needed`` without creating a job."""
        return self.run_child([protocol.ACTION_SYNC, *_table_args(namespace, table, **options)])

    def init_table(
        self, namespace: str, table: str, *, reinit: bool = False, **options: Any
    ) -> dict[str, Any]:
        """Initialize one table, dropping a half-initialized leftover (or, with ``reinit``, the old table)."""
        args = [protocol.ACTION_INIT, *_table_args(namespace, table, **options)]
        return self.run_child(args + (["--reinit"] if reinit else []))

    def kill_child(self) -> None:
        """Stop the running child process and everything it started (task kill or timeout)."""
        child, self._child = self._child, None
        if child is None or child.poll() is not None:
            return
        self.log.warning("Stopping the DAP child process %s", child.pid)
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()

    # -- environment ------------------------------------------------------------------------------

    def interpreter(self) -> str:
        """The DAP virtualenv's Python; fails saying what is wrong when it is missing."""
        path = self.dap_python or os.environ.get(DAP_PYTHON_ENV)
        if not path:
            raise DapPermanentError(
                f"{DAP_PYTHON_ENV} is not set: it must name the python of the virtualenv holding "
                "instructure-dap-client (the MWAA startup script exports it)"
            )
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise DapPermanentError(
                f"{DAP_PYTHON_ENV}={path} is missing or not executable: the DAP virtualenv was not built "
                "on this worker (check the startup script's log)"
            )
        return path

    def api_url(self) -> str:
        """The API base URL from the connection's host (with scheme and port when given)."""
        conn = self.get_connection(self.dap_conn_id)
        host = (conn.host or "").rstrip("/")
        if not host:
            return DEFAULT_API_URL
        if "://" not in host:
            scheme = conn.schema or (conn.conn_type if conn.conn_type in ("http", "https") else "https")
            host = f"{scheme}://{host}"
        return f"{host}:{conn.port}" if conn.port else host

    def child_environment(self, *, with_database: bool = True) -> dict[str, str]:
        """The child's whole environment: a few pass-through variables, the API and database secrets."""
        dap = self.get_connection(self.dap_conn_id)
        if not dap.login or not dap.password:
            raise DapPermanentError(
                f"Connection {self.dap_conn_id} needs login (DAP client id) and password (client secret)"
            )
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        env |= {
            "PYTHONPATH": str(PLUGINS_DIR),
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "DAP_TRACKING": "false",
            protocol.ENV_API_URL: self.api_url(),
            protocol.ENV_CLIENT_ID: dap.login,
            protocol.ENV_CLIENT_SECRET: dap.password,
        }
        self._secrets = [dap.password]
        if with_database:
            pg = self.get_connection(self.postgres_conn_id)
            try:
                url = postgres_connection_string(
                    host=pg.host,
                    port=pg.port,
                    login=pg.login,
                    password=pg.password,
                    database=pg.schema,
                    extra=pg.extra_dejson,
                )
            except ValueError as error:
                raise DapPermanentError(f"Connection {self.postgres_conn_id}: {error}") from None
            env[protocol.ENV_DATABASE_URL] = url
            if pg.password:
                self._secrets += [pg.password, quote(pg.password, safe="")]
        return env

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this hook's connections replaced by ``***``."""
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    # -- the child process ------------------------------------------------------------------------

    def run_child(self, args: list[str], *, with_database: bool = True) -> dict[str, Any]:
        """Run ``python -m cd2.dap_child <args>``, relay its log, return its result or raise by category."""
        python = self.interpreter()
        env = self.child_environment(with_database=with_database)
        result_read, result_write = os.pipe()
        env[protocol.ENV_RESULT_FD] = str(result_write)
        try:
            self._child = subprocess.Popen(
                [python, "-m", "cd2.dap_child", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(result_write,),
                start_new_session=True,
            )
        except OSError as error:
            os.close(result_read)
            raise DapPermanentError(
                f"Cannot start the DAP environment's interpreter {python}: {error}"
            ) from None
        finally:
            os.close(result_write)
        result_chunks: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(result_read, result_chunks), daemon=True)
        reader.start()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        child = self._child
        try:
            assert child.stdout is not None
            for raw in child.stdout:
                line = self.scrub(raw.decode(errors="replace").rstrip())
                tail.append(line)
                self.log.info("[dap] %s", line)
            returncode = child.wait()
        except BaseException:
            self.kill_child()
            raise
        finally:
            self._child = None
        reader.join()
        return self._interpret(b"".join(result_chunks), returncode, python, list(tail))

    def _interpret(self, payload: bytes, returncode: int, python: str, tail: list[str]) -> dict[str, Any]:
        if not payload.strip() and returncode < 0:
            raise DapTransientError(f"The DAP child process was stopped by signal {-returncode}")
        if not payload.strip():
            last = next((line for line in reversed(tail) if line.strip()), "(no output)")
            raise DapPermanentError(
                f"The DAP environment's interpreter {python} exited with code {returncode} without a "
                f"result; the DAP virtualenv may be broken. Last output: {last}"
            )
        result = json.loads(payload)
        if result.get("ok"):
            return result
        error = result["error"]
        message = self.scrub(f"{error['type']}: {error['message']}")
        if error["category"] == protocol.TRANSIENT:
            raise DapTransientError(message)
        raise DapPermanentError(message)


def _table_args(
    namespace: str,
    table: str,
    *,
    holder: str = "cd2_replica",
    lock_wait_seconds: float = 300.0,
    max_active_tables: int = 5,
) -> list[str]:
    return [
        "--namespace", namespace, "--table", table, "--holder", holder,
        "--lock-wait", str(lock_wait_seconds), "--max-active-tables", str(max_active_tables),
    ]  # fmt: skip


def _read_all(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as stream:
        chunks.append(stream.read())


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
