"""DapHook: runs the Instructure DAP client, one job per child process, on the DAP virtualenv's Python.

The client cannot share MWAA's Python environment, so each job (:mod:`cd2.contract`) runs as
``python -m cd2.dap_child <argv>`` on the interpreter named by ``CD2_DAP_PYTHON``. Secrets reach the child
only through its environment and are registered with Airflow's secret masker; the child's log lines are
relayed into the task log; it reports one JSON result on a pipe. Why the lifecycle guards (kill on
timeout, ``on_kill``, the child's orphan watchdog) exist is in docs/design.md.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.log import mask_secret

from cd2 import assets, contract
from cd2.connection_string import postgres_connection_string
from cd2.contract import ChildError, ContractError, ErrorCategory, ListJob, ListResult, TableJob, TableResult

DAP_PYTHON_ENV = "CD2_DAP_PYTHON"
DEFAULT_API_URL = "https://api-gateway.instructure.com"
# The folder holding the ``cd2`` package, put on the child's PYTHONPATH.
PLUGINS_DIR = Path(__file__).resolve().parents[2]
# Non-secret variables the child may need (certificates, proxies, locale, temp dir, reader switch).
PASSED_THROUGH = (
    "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "CD2_ACCELERATED_READER", "CD2_BULK_UPSERT", "CD2_STREAMING", "CD2_STREAMING_PREFETCH", "CD2_FAST_INIT",
    "CD2_FAST_SYNC", "CD2_FAST_INIT_CONNECTIONS", "CD2_FAST_LOAD_BATCH_BYTES",
)  # fmt: skip
KILL_GRACE_SECONDS = 10
# What starts each line of the child's output (its log, see dap_child.logs) in the task log.
RELAYED_PREFIX = "[dap] "
TAIL_LINES = 20


def child_log_level(line: str, previous: int) -> int:
    """The level of a child's log line (``LEVEL logger: message``, see ``dap_child.logs``); a line
    without one (a traceback's) continues the record before it."""
    word = line.partition(" ")[0]
    level = logging.getLevelNamesMapping().get(word) if word.isupper() else None
    return level if level is not None else previous


class _DapError:
    """Carries the child's :class:`ChildError`, so the failed table's record can say what went wrong."""

    def __init__(self, error: ChildError) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.error = error


class DapTransientError(_DapError, AirflowException):
    """A DAP job failed and its category allows Airflow another try (5xx, connection reset, ...)."""


class DapPermanentError(_DapError, AirflowFailException):
    """A DAP job failed and its category allows no more tries (credentials, unknown table, ...)."""


def airflow_error(error: ChildError, try_number: int = 1) -> DapTransientError | DapPermanentError:
    """The exception a failure on try ``try_number`` raises: Airflow retries it while the category's
    ``retries`` allow (:meth:`ErrorCategory.may_retry`), else the task fails at once."""
    if error.category.may_retry(try_number):
        return DapTransientError(error)
    return DapPermanentError(error)


def failure_of(error: BaseException) -> ChildError:
    """What a table task's exception says, as a :class:`ChildError`: a DAP job's own, else by its kind
    (``AirflowFailException``: permanent; another Airflow exception, e.g. a timeout, or a stop: transient;
    anything else: unknown)."""
    if isinstance(error, _DapError):
        return error.error
    if isinstance(error, AirflowFailException):
        category = ErrorCategory.PERMANENT
    elif isinstance(error, AirflowException) or not isinstance(error, Exception):
        category = ErrorCategory.TRANSIENT
    else:
        category = ErrorCategory.UNKNOWN
    text = str(error).strip()
    return ChildError(category, type(error).__name__, text.splitlines()[0] if text else type(error).__name__)


def raise_for_try(error: Exception, try_number: int) -> NoReturn:
    """Raise a task's ``error`` as its category decides on try ``try_number`` (see :func:`airflow_error`)."""
    decided = airflow_error(failure_of(error), try_number)
    if type(decided) is type(error):
        raise error
    raise decided from error


def _permanent(type_: str, message: str) -> DapPermanentError:
    return DapPermanentError(ChildError(ErrorCategory.PERMANENT, type_, message))


class DapHook(BaseHook):
    """Run DAP client jobs against the ``dap_default`` API and the ``cd2_postgres`` database.

    The client lives in another interpreter, so the hook holds no client object: each call starts a
    child process for one job and returns its typed result.

    :param dap_conn_id: host = API base URL, login = client id, password = client secret.
    :param postgres_conn_id: the target PostgreSQL; extra ``sslmode`` becomes the client's ``?ssl=``.
    :param budget_conn_id: the PostgreSQL that keeps the API budget, when not the target (several
        instances keep theirs in one database: :mod:`cd2.instances`).
    :param dap_python: the DAP virtualenv's interpreter; defaults to ``$CD2_DAP_PYTHON``.
    """

    conn_name_attr = "dap_conn_id"
    default_conn_name = "dap_default"
    default_postgres_conn_name = "cd2_postgres"
    hook_name = "Canvas Data 2 (DAP API)"

    def __init__(
        self,
        *,
        dap_conn_id: str = default_conn_name,
        postgres_conn_id: str = default_postgres_conn_name,
        budget_conn_id: str | None = None,
        dap_python: str | None = None,
    ) -> None:
        super().__init__()
        self.dap_conn_id = dap_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.budget_conn_id = budget_conn_id
        self.dap_python = dap_python
        self._child: subprocess.Popen | None = None
        self._secrets: list[str] = []

    # -- public jobs ------------------------------------------------------------------------------

    def list_tables(self, namespaces: Sequence[str], **job_options: Any) -> dict[str, list[str]]:
        """The tables of each namespace, as the API lists them (the database holds the API budget)."""
        payload = self.run_child(ListJob(namespace=tuple(namespaces), **job_options))
        return self._decode(ListResult, payload).tables

    def run_table_job(self, job: TableJob) -> TableResult:
        """Sync, init or plan one table (a sync of an uninitialized table reports ``init_needed``, no job;
        a plan reports ``planned`` and creates no job)."""
        result = self._decode(TableResult, self.run_child(job))
        if result.patches is not None:
            self.log.info("DAP client patches active: %s", ", ".join(result.patches) or "none")
        return result

    def kill_child(self) -> None:
        """Stop the running child process (task kill or timeout): SIGTERM, then SIGKILL after a grace."""
        child, self._child = self._child, None
        if child is None or child.poll() is not None:
            return
        self.log.warning("Stopping the DAP child process %s", child.pid)
        child.terminate()
        try:
            child.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    # -- environment ------------------------------------------------------------------------------

    def interpreter(self) -> str:
        """The DAP virtualenv's Python; fails saying what is wrong when it is missing."""
        path = self.dap_python or os.environ.get(DAP_PYTHON_ENV)
        if not path:
            raise _permanent(
                "DapEnvironmentError",
                f"{DAP_PYTHON_ENV} is not set: it must name the python of the virtualenv holding "
                "instructure-dap-client (the MWAA startup script exports it)",
            )
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise _permanent(
                "DapEnvironmentError",
                f"{DAP_PYTHON_ENV}={path} is missing or not executable: the DAP virtualenv was not built "
                "on this worker (check the startup script's log)",
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

    def table_asset_uri(self, label: str) -> str:
        """The asset URI of a table in the ``cd2_postgres`` database (no credentials in it)."""
        pg = self.get_connection(self.postgres_conn_id)
        return assets.table_asset_uri(pg.host or "localhost", pg.port, pg.schema or "postgres", label)

    def child_environment(self, *, with_database: bool = True) -> dict[str, str]:
        """The child's whole environment: a few pass-through variables, the API and database secrets."""
        dap = self.get_connection(self.dap_conn_id)
        if not dap.login or not dap.password:
            raise _permanent(
                "ConnectionError",
                f"Connection {self.dap_conn_id} needs login (DAP client id) and password (client secret)",
            )
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        env |= {
            "PYTHONPATH": str(PLUGINS_DIR),
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "DAP_TRACKING": "false",
            contract.ENV_API_URL: self.api_url(),
            contract.ENV_CLIENT_ID: dap.login,
            contract.ENV_CLIENT_SECRET: dap.password,
        }
        self._remember_secret(dap.password)
        if with_database:
            env[contract.ENV_DATABASE_URL] = self._database_url(self.postgres_conn_id)
            if self.budget_conn_id not in (None, self.postgres_conn_id):
                env[contract.ENV_BUDGET_DATABASE_URL] = self._database_url(self.budget_conn_id)
        return env

    def _database_url(self, conn_id: str) -> str:
        """The client's ``postgresql://`` URL of a connection, its password masked."""
        pg = self.get_connection(conn_id)
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
            raise _permanent("ConnectionError", f"Connection {conn_id}: {error}") from None
        if pg.password:
            self._remember_secret(pg.password)
            self._remember_secret(quote(pg.password, safe=""))
        return url

    def _remember_secret(self, secret: str) -> None:
        """Mask ``secret`` in the task log (Airflow's masker), and in error text bound for XCom."""
        mask_secret(secret)
        self._secrets.append(secret)

    def without_secrets(self, text: str) -> str:
        """``text`` with this hook's secrets replaced by ``***``: for the error text that goes into
        the table's XCom record and the notification, which the log masker does not see."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- the child process ------------------------------------------------------------------------

    def run_child(self, job: ListJob | TableJob, *, with_database: bool = True) -> bytes:
        """Run ``python -m cd2.dap_child <job argv>``, relay its log, return its result's JSON bytes.

        The child stays in the task's process group, so Airflow's signals to the group reach it too.
        """
        python = self.interpreter()
        env = self.child_environment(with_database=with_database)
        result_read, result_write = os.pipe()
        env[contract.ENV_RESULT_FD] = str(result_write)
        try:
            self._child = subprocess.Popen(
                [python, "-m", "cd2.dap_child", *job.to_argv()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(result_write,),
            )
        except OSError as error:
            os.close(result_read)
            raise _permanent(
                "DapEnvironmentError", f"Cannot start the DAP environment's interpreter {python}: {error}"
            ) from None
        finally:
            os.close(result_write)
        result_chunks: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(result_read, result_chunks), daemon=True)
        reader.start()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        child = self._child
        level = logging.INFO
        try:
            assert child.stdout is not None
            for raw in child.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line)
                level = child_log_level(line, level)
                self.log.log(level, "%s%s", RELAYED_PREFIX, line)
            returncode = child.wait()
        except BaseException:
            self.kill_child()
            raise
        finally:
            self._child = None
        reader.join()
        payload = b"".join(result_chunks)
        if not payload.strip() and returncode < 0:
            raise airflow_error(
                ChildError(
                    ErrorCategory.TRANSIENT,
                    "ChildStopped",
                    f"The DAP child process was stopped by signal {-returncode}",
                )
            )
        if not payload.strip():
            last = next((line for line in reversed(tail) if line.strip()), "(no output)")
            raise _permanent(
                "DapEnvironmentError",
                self.without_secrets(
                    f"The DAP environment's interpreter {python} exited with code {returncode} without a "
                    f"result; the DAP virtualenv may be broken. Last output: {last}"
                ),
            )
        return payload

    def _decode[R: (ListResult, TableResult)](self, kind: type[R], payload: bytes) -> R:
        """The child's result, or its error raised as a first try's (secrets removed from its text)."""
        try:
            result = kind.from_json(payload)
        except ContractError as error:
            raise _permanent(
                "ContractError", f"the DAP child's result does not fit the contract: {error}"
            ) from None
        if result.error is None:
            return result
        raise airflow_error(replace(result.error, message=self.without_secrets(result.error.message)))


def _read_all(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as stream:
        chunks.append(stream.read())
