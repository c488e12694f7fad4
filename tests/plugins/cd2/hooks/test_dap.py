"""DapHook against the DAP emulator over HTTP and a real PostgreSQL, each action in a real child process."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time

import psutil
import pytest

from cd2.contract import Action, TableJob, TableResult
from cd2.hooks.dap import DapHook, DapPermanentError, DapTransientError, child_log_level
from local_dap.airflow_home import AIRFLOW_PYTHON, dap_connection, postgres_connection
from local_dap.truth import replica_truth
from tests.support.paths import DAP_PYTHON, REPO_ROOT

NS = "canvas"


@pytest.fixture
def hook(dap_emulator, database_url, monkeypatch) -> DapHook:
    """A hook whose connections point at the emulator and this test's fresh database."""
    dap_emulator.reset()
    dap = dap_connection(dap_emulator)
    pg = postgres_connection(database_url + "?sslmode=disable")
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap))
    monkeypatch.setenv("AIRFLOW_CONN_CD2_POSTGRES", json.dumps(pg))
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    return DapHook()


def sync(hook: DapHook, table: str, **options) -> TableResult:
    return hook.run_table_job(TableJob(action=Action.SYNC, namespace=NS, table=table, **options))


def init(hook: DapHook, table: str, **options) -> TableResult:
    return hook.run_table_job(TableJob(action=Action.INIT, namespace=NS, table=table, **options))


def in_step(emulator, database_url, table: str) -> bool:
    return emulator.truth(NS, table) == replica_truth(database_url, NS, table)


def data_jobs(emulator, table: str) -> int:
    return sum(1 for r in emulator.requests() if r.get("endpoint") == "data" and r.get("table") == table)


def test_list_tables(hook):
    tables = hook.list_tables(["canvas"])
    assert "accounts" in tables["canvas"] and "users" in tables["canvas"]


def test_init_needed_then_init_then_sync_keep_replica_equal_to_source(hook, dap_emulator, database_url):
    first = sync(hook, "accounts")
    assert (first.outcome, first.reason) == ("init_needed", "not initialized")
    assert data_jobs(dap_emulator, "accounts") == 0  # decided from table_sync, no job created

    initialized = init(hook, "accounts")
    assert (initialized.outcome, initialized.rows, initialized.schema_version) == ("initialized", 30, 1)
    assert 10 < initialized.peak_rss_mb < 1000
    assert in_step(dap_emulator, database_url, "accounts")

    dap_emulator.advance(changes=10)
    synced = sync(hook, "accounts")
    assert synced.outcome == "synced" and synced.watermark_after > synced.watermark_before
    assert synced.rows == 10 and synced.duration_seconds > 0
    assert in_step(dap_emulator, database_url, "accounts")

    # Re-running either task (as clearing it in the UI does) changes nothing: init of an initialized
    # table without reinit synchronizes instead.
    assert sync(hook, "accounts").outcome == "synced"
    assert init(hook, "accounts").outcome == "synced"
    assert in_step(dap_emulator, database_url, "accounts")


def test_half_initialized_leftover_is_dropped_and_reloaded(
    hook, dap_emulator, database_url, postgres_server, capfd
):
    init(hook, "users")
    dap_emulator.advance(changes=5)
    # What an init killed mid-load leaves: part of the rows, no table_sync row.
    with postgres_server.connect(database_url.rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM canvas.users WHERE id % 2 = 0")
        cur.execute("DELETE FROM instructure_dap.table_sync WHERE source_table = 'users'")
    assert sync(hook, "users").outcome == "init_needed"
    capfd.readouterr()
    assert init(hook, "users").outcome == "initialized"
    assert in_step(dap_emulator, database_url, "users")
    # The child's WARNING keeps its level in the task log (Airflow's console renderer: "[warning  ]").
    relayed = [line for line in capfd.readouterr().out.splitlines() if "] [dap] " in line]
    leftover = [line for line in relayed if "half-initialized leftover" in line]
    assert leftover and all("[warning" in line for line in leftover), relayed
    assert any("[info" in line and "Inserted" in line for line in relayed), relayed


def test_force_reinit_and_out_of_range_reload_the_table(hook, dap_emulator, database_url):
    init(hook, "courses")
    dap_emulator.advance(changes=5)
    dap_emulator.inject_fault("out_of_range", table="courses")
    too_old = sync(hook, "courses")
    assert (too_old.outcome, too_old.reinit) == ("init_needed", True)
    reloaded = init(hook, "courses", reinit=True)
    assert reloaded.outcome == "initialized" and reloaded.watermark_before is not None
    assert in_step(dap_emulator, database_url, "courses")


def test_errors_are_sorted_into_permanent_and_transient(hook, dap_emulator):
    dap_emulator.inject_fault("not_found", endpoint="schema", table="accounts")
    with pytest.raises(DapPermanentError, match="NotFoundError") as error:
        init(hook, "accounts")
    assert "check cd2_config" in str(error.value)

    dap_emulator.inject_fault("unauthorized", endpoint="login")
    with pytest.raises(DapPermanentError, match="dap_default connection's login"):
        hook.list_tables(["canvas"])

    dap_emulator.inject_fault("server_error", endpoint="list", status=503, times=None)
    with pytest.raises(DapTransientError):
        hook.list_tables(["canvas"])


def dap_children() -> dict[int, psutil.Process]:
    """This process's running DAP children by pid (other tests on the machine, such as a parallel
    worker's, run their own)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if "cd2.dap_child" in " ".join(child.cmdline()):
                found[child.pid] = child
        except psutil.Error:
            continue
    return found


def running(process: psutil.Process) -> bool:
    """Whether ``process`` (the same one: psutil checks its start time) still runs, a zombie not counted."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ChildWatch:
    """Every DAP child this process starts while the watch runs; :meth:`alive` those still running
    (reparented orphans included: a pid is checked by itself, not as our descendant)."""

    def __init__(self) -> None:
        self.seen: dict[int, psutil.Process] = {}
        self.command_lines: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for pid, process in dap_children().items():
                if pid not in self.seen:
                    try:
                        self.command_lines[pid] = " ".join(process.cmdline())
                    except psutil.Error:
                        continue
                    self.seen[pid] = process
            time.sleep(0.05)

    def __enter__(self) -> ChildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> list[str]:
        return [self.command_lines[pid] for pid, process in self.seen.items() if running(process)]


def test_a_locked_table_waits_then_is_busy_naming_the_holder_and_argv_has_no_secret(
    hook, dap_emulator, postgres_server, database_url, capfd
):
    holder = postgres_server.connect(database_url.rsplit("/", 1)[1])
    try:
        with holder.cursor() as cur:
            cur.execute("SET application_name = 'cd2_replica manual__holding_run'")
            cur.execute("SELECT pg_advisory_lock(1128542804, hashtext('canvas.accounts'))")
        started = time.monotonic()
        with ChildWatch() as watch:
            result = sync(hook, "accounts", lock_wait_seconds=2)
        assert result.outcome == "busy" and result.error is None
        assert "worked on by cd2_replica manual__holding_run since 20" in result.reason
        assert 2 <= time.monotonic() - started < 30
        # A plan run does not wait for the table: a run would do nothing to it now.
        planned = hook.run_table_job(TableJob(action=Action.PLAN, namespace=NS, table="accounts"))
        assert planned.outcome == "planned" and planned.plan.action == "nothing"
        assert planned.plan.reason.startswith("busy: worked on by cd2_replica manual__holding_run")
        assert planned.plan.api_schema_version == 1 and planned.plan.rows is None
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM cd2_replica.api_calls WHERE endpoint = 'schema'")
            assert cur.fetchone()[0] == 1  # the plan's one schema call went through the pacer
        assert [r["endpoint"] for r in dap_emulator.requests() if r["endpoint"] != "login"] == ["schema"]
    finally:
        holder.close()
    seen = list(watch.command_lines.values())
    assert seen, "the child process was not seen running"
    task_log = "".join(capfd.readouterr())
    assert "[dap]" in task_log, "the child's relayed log was captured"
    secrets = [dap_emulator.client_secret, postgres_server.password]
    for text in seen + [task_log]:
        assert not any(secret in text for secret in secrets)
    assert "--holder" in seen[0]


def test_the_child_dies_with_a_killed_or_timed_out_task(hook, postgres_server, database_url):
    holder = postgres_server.connect(database_url.rsplit("/", 1)[1])
    try:
        with holder.cursor() as cur:  # keeps the child waiting for the table
            cur.execute("SELECT pg_advisory_lock(1128542804, hashtext('canvas.accounts'))")
        # on_kill, from another thread as Airflow's task runner does
        threading.Timer(2, hook.kill_child).start()
        with ChildWatch() as killed, pytest.raises(DapTransientError, match="stopped by signal 15"):
            sync(hook, "accounts", lock_wait_seconds=60)
        assert killed.seen and not killed.alive()

        # execution_timeout: Airflow raises in the task's main thread from a signal handler
        def time_out(signum, frame):
            raise TimeoutError("execution_timeout")

        previous = signal.signal(signal.SIGALRM, time_out)
        signal.alarm(2)
        try:
            with ChildWatch() as timed_out, pytest.raises(TimeoutError):
                sync(hook, "accounts", lock_wait_seconds=60)
        finally:
            signal.signal(signal.SIGALRM, previous)
        assert timed_out.seen and not timed_out.alive()
    finally:
        holder.close()


HOOK_PROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
from cd2.contract import Action, TableJob
from cd2.hooks.dap import DapHook
DapHook().run_table_job(TableJob(action=Action.INIT, namespace="canvas", table="accounts"))
"""


def table_lock_is_free(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(1128542804, hashtext('canvas.accounts'))")
        free = cur.fetchone()[0]
        if free:
            cur.execute("SELECT pg_advisory_unlock(1128542804, hashtext('canvas.accounts'))")
    return free


def test_the_child_stops_and_frees_the_table_when_the_task_process_is_sigkilled(
    hook, dap_emulator, postgres_server, database_url
):
    # The watchdog's case: the task process dies without running any handler (OOM killer, or the
    # supervisor's SIGKILL escalation); its child is then an orphan holding the table's lock.
    dap_emulator.inject_fault("slow_job", table="accounts", polls=100)
    task = subprocess.Popen([str(AIRFLOW_PYTHON), "-c", HOOK_PROCESS, str(REPO_ROOT / "plugins")])
    observer = postgres_server.connect(database_url.rsplit("/", 1)[1])
    try:
        deadline = time.monotonic() + 60
        while table_lock_is_free(observer):  # the child holds the lock while it polls its slow job
            assert time.monotonic() < deadline and task.poll() is None, "the child never took the lock"
            time.sleep(0.2)
        orphans = [
            c
            for c in psutil.Process(task.pid).children(recursive=True)
            if "cd2.dap_child" in " ".join(c.cmdline())
        ]
        assert orphans, "the task process has no DAP child"
        task.kill()
        task.wait()
        deadline = time.monotonic() + 20
        while any(running(child) for child in orphans) or not table_lock_is_free(observer):
            assert time.monotonic() < deadline, "the orphaned child went on holding the table"
            time.sleep(0.2)
    finally:
        task.kill()
        observer.close()


def test_missing_or_broken_dap_interpreter_fails_saying_so(hook, monkeypatch, tmp_path):
    monkeypatch.delenv("CD2_DAP_PYTHON")
    with pytest.raises(DapPermanentError, match="CD2_DAP_PYTHON is not set"):
        hook.list_tables(["canvas"])
    monkeypatch.setenv("CD2_DAP_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(DapPermanentError, match="missing or not executable"):
        hook.list_tables(["canvas"])
    # An interpreter without the DAP client (Airflow's) stands for a broken virtualenv.
    monkeypatch.setenv("CD2_DAP_PYTHON", str(AIRFLOW_PYTHON))
    with pytest.raises(DapPermanentError, match="without a result.*No module named 'dap'"):
        hook.list_tables(["canvas"])


def test_child_log_level_is_read_from_the_line_and_carried_by_tracebacks():
    assert child_log_level("WARNING cd2.dap_child: dropping", logging.INFO) == logging.WARNING
    assert child_log_level("ERROR cd2.dap_child: sync failed", logging.INFO) == logging.ERROR
    assert child_log_level("Traceback (most recent call last):", logging.ERROR) == logging.ERROR
    assert child_log_level("INFO dap.api: done", logging.ERROR) == logging.INFO
    assert child_log_level("NOTALEVEL x", logging.INFO) == logging.INFO
