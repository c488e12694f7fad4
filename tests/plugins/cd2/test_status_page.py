"""The status page's parts: reading a real replica, merging, rendering, and a plugin file that stays light.

The page as the API server serves it (auth, a real run's task instances and XComs) is tested on the
real-scheduler deployment: tests/dags/test_real_scheduler.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from cd2 import status_page
from cd2.contract import Action, ChildError, ErrorCategory, Outcome, TableJob, TableResult
from cd2.dag_names import INIT_TASK_ID, SYNC_TASK_ID
from cd2.hooks.dap import DapHook
from cd2.status_page import (
    LastOutcome,
    ReplicaTable,
    freshness_from_config,
    last_outcome,
    read_replica,
    render_html,
    table_statuses,
)
from local_dap.airflow_home import AIRFLOW_PYTHON, dap_connection, postgres_connection
from tests.support.paths import DAP_PYTHON, REPO_ROOT

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RUN = "manual__2026-12-02T10:00:00+00:00"


@pytest.fixture
def replica(dap_emulator, database_url, monkeypatch) -> str:
    """This test's database with canvas.accounts and canvas.users initialized by the real child."""
    dap_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(dap_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    hook = DapHook()
    for table in ("accounts", "users"):
        result = hook.run_table_job(TableJob(action=Action.INIT, namespace="canvas", table=table))
        assert result.outcome is Outcome.INITIALIZED
    return database_url


def test_read_replica_gives_each_table_sync_row_with_its_exact_count(replica, monkeypatch):
    with psycopg2.connect(replica) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT source_namespace || '.' || source_table, timestamp, schema_version "
            "FROM instructure_dap.table_sync"
        )
        expected = {}
        for label, watermark, version in cur.fetchall():
            cur.execute(f"SELECT count(*) FROM {label}")
            expected[label] = (watermark.replace(tzinfo=UTC), version, cur.fetchone()[0])
    conn = status_page.connect_replica()  # through the cd2_postgres connection, as the page does
    try:
        found = read_replica(conn)
        assert {label: (t.watermark, t.schema_version, t.rows) for label, t in found.items()} == expected
        assert sorted(found) == ["canvas.accounts", "canvas.users"]
        assert not any(t.rows_estimated for t in found.values())
        assert all(t.rows for t in found.values())

        # Above the limit the planner's estimate stands in for count(*) (exact here, after ANALYZE).
        with conn.cursor() as cur:
            cur.execute("ANALYZE canvas.accounts")
        monkeypatch.setattr(status_page.replica, "EXACT_COUNT_LIMIT", 1)
        accounts = read_replica(conn)["canvas.accounts"]
        assert accounts.rows_estimated and accounts.rows == expected["canvas.accounts"][2]
    finally:
        conn.close()


def test_read_replica_gives_a_log_tables_oldest_row_and_no_oldest_row_for_other_tables(replica):
    result = DapHook().run_table_job(TableJob(action=Action.INIT, namespace="canvas_logs", table="web_logs"))
    assert result.outcome is Outcome.INITIALIZED
    with psycopg2.connect(replica) as conn, conn.cursor() as cur:
        cur.execute('SELECT min("timestamp"), count(*) FROM canvas_logs.web_logs')
        oldest, rows = cur.fetchone()
    assert rows > 1 and oldest is not None
    conn = status_page.connect_replica()
    try:
        found = read_replica(conn)
    finally:
        conn.close()
    assert found["canvas_logs.web_logs"].oldest_row == oldest.replace(tzinfo=UTC)
    assert found["canvas.accounts"].oldest_row is None
    statuses = table_statuses(found, {}, freshness_from_config("")[0], NOW)
    logs = next(s for s in statuses if s.table == "canvas_logs.web_logs")
    assert logs.to_json()["oldest_row"] == oldest.replace(tzinfo=UTC).isoformat()
    assert f"<td>{oldest:%Y-%m-%d %H:%M:%S}</td>" in render_html(statuses, now=NOW)


def test_a_big_log_table_has_an_oldest_row_only_through_an_index_on_its_time(replica, monkeypatch):
    DapHook().run_table_job(TableJob(action=Action.INIT, namespace="canvas_logs", table="web_logs"))
    monkeypatch.setattr(status_page.replica, "EXACT_COUNT_LIMIT", 1)
    with psycopg2.connect(replica) as conn, conn.cursor() as cur:
        cur.execute("ANALYZE canvas_logs.web_logs")
    conn = status_page.connect_replica()
    try:
        assert read_replica(conn)["canvas_logs.web_logs"].oldest_row is None  # min() would read it all
        with conn.cursor() as cur:
            cur.execute('CREATE INDEX ON canvas_logs.web_logs ("timestamp")')
            cur.execute('SELECT min("timestamp") FROM canvas_logs.web_logs')
            (oldest,) = cur.fetchone()
        found = read_replica(conn)["canvas_logs.web_logs"]
        assert found.rows_estimated and found.oldest_row == oldest.replace(tzinfo=UTC)
    finally:
        conn.close()


def test_read_replica_of_a_database_the_client_never_touched_is_empty(database_url):
    with psycopg2.connect(database_url) as conn:
        assert read_replica(conn) == {}


def test_stale_is_a_watermark_older_than_the_tables_configured_bound():
    freshness, problem = freshness_from_config(
        json.dumps({"freshness_hours": {"default": 12, "canvas.users": 48}})
    )
    assert problem is None
    replica = {
        "canvas.accounts": ReplicaTable("canvas.accounts", NOW - timedelta(hours=13), 2, 30),
        "canvas.users": ReplicaTable("canvas.users", NOW - timedelta(hours=13), 1, 1_500_000, True),
        "canvas.courses": ReplicaTable("canvas.courses", NOW - timedelta(hours=1), 1, 0),
    }
    outcomes = {
        "canvas.accounts": LastOutcome("canvas.accounts", "synced", RUN, SYNC_TASK_ID, 0),
        "canvas.quizzes": LastOutcome("canvas.quizzes", "failed", RUN, INIT_TASK_ID, 4, "KeyError: 'x'"),
    }
    rows = {s.table: s for s in table_statuses(replica, outcomes, freshness, NOW)}
    assert list(rows) == ["canvas.accounts", "canvas.courses", "canvas.quizzes", "canvas.users"]
    assert {label: (s.stale, s.freshness_hours) for label, s in rows.items()} == {
        "canvas.accounts": (True, 12),
        "canvas.courses": (False, 12),
        "canvas.quizzes": (False, 12),  # never initialized: no watermark, it shows as failed instead
        "canvas.users": (False, 48),
    }
    assert rows["canvas.accounts"].lag_seconds == 13 * 3600
    assert rows["canvas.quizzes"].ui_path == (
        "dags/cd2_replica/runs/manual__2026-12-02T10%3A00%3A00%2B00%3A00/tasks/table.init/mapped/4"
    )
    assert rows["canvas.courses"].ui_path is None  # no run knows it
    assert rows["canvas.users"].to_json()["watermark"] == (NOW - timedelta(hours=13)).isoformat()


def test_an_invalid_config_falls_back_to_the_default_bound_and_says_why():
    freshness, problem = freshness_from_config('{"freshness_hours": -1}')
    assert freshness.hours_for("canvas.users") == 12 and "freshness_hours" in problem


def record(task_id: str, outcome: Outcome, **fields) -> tuple[tuple[str, str, int], dict]:
    return (RUN, task_id, 3), TableResult("canvas.users", outcome, **fields).to_dict()


def test_last_outcome_names_the_task_that_decided_it():
    done = {SYNC_TASK_ID: ("canvas.users", "success"), INIT_TASK_ID: ("canvas.users", "success")}

    def outcome(*records, tasks=done):
        return last_outcome(RUN, 3, tasks, dict(records))

    synced = outcome(record(SYNC_TASK_ID, Outcome.SYNCED, rows=5), record(INIT_TASK_ID, Outcome.SKIPPED))
    assert (synced.outcome, synced.task_id, synced.map_index) == ("synced", SYNC_TASK_ID, 3)
    initialized = outcome(
        record(SYNC_TASK_ID, Outcome.INIT_NEEDED), record(INIT_TASK_ID, Outcome.INITIALIZED)
    )
    assert (initialized.outcome, initialized.task_id) == ("initialized", INIT_TASK_ID)
    error = ChildError(ErrorCategory.PERMANENT, "ValueError", "bad <schema>\nmore")
    failed = outcome(record(SYNC_TASK_ID, Outcome.FAILED, error=error))
    assert (failed.outcome, failed.task_id, failed.error) == (
        "failed",
        SYNC_TASK_ID,
        "ValueError: bad <schema>",
    )
    waiting = {SYNC_TASK_ID: ("canvas.users", "success"), INIT_TASK_ID: ("canvas.users", "running")}
    running = outcome(record(SYNC_TASK_ID, Outcome.INIT_NEEDED), tasks=waiting)
    assert (running.outcome, running.task_id) == ("running", INIT_TASK_ID)
    no_record = outcome(tasks={SYNC_TASK_ID: ("canvas.users", "queued")})
    assert (no_record.table, no_record.outcome, no_record.task_id) == ("canvas.users", "queued", SYNC_TASK_ID)
    assert outcome(tasks={SYNC_TASK_ID: (None, "scheduled")}) is None  # not named yet
    # A record of another shape (an older version's) does not break the page.
    odd = last_outcome(RUN, 3, done, {(RUN, SYNC_TASK_ID, 3): {"label": "canvas.users", "extra": 1}})
    assert (odd.outcome, odd.task_id) == ("success", SYNC_TASK_ID)


def test_the_page_escapes_marks_stale_rows_and_links_each_run_to_its_task_instance():
    replica = {"canvas.users": ReplicaTable("canvas.users", NOW - timedelta(days=2), 3, 1_234_567, True)}
    outcomes = {"canvas.users": LastOutcome("canvas.users", "failed", RUN, SYNC_TASK_ID, 7, "E: <b>oops</b>")}
    statuses = table_statuses(replica, outcomes, freshness_from_config("")[0], NOW)
    text = render_html(statuses, now=NOW, problems=["Could not read <the> replica"])
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text
    assert "1 tables, 1 stale, 1 failed" in text
    assert '<tr class="stale">' in text and "2d00h (stale)" in text
    assert '<td class="num">12h</td>' in text
    assert "~1,234,567" in text and "E: &lt;b&gt;oops&lt;/b&gt;" in text and "<b>oops" not in text
    assert "Could not read &lt;the&gt; replica" in text
    link = f'href="../{statuses[0].ui_path}" target="_top">{RUN}</a>'
    assert link in text and "mapped/7" in link


def test_the_plugin_file_imports_neither_the_page_nor_the_api_server():
    """Airflow imports plugins/ in every task process: the page is built on its first request."""
    script = (
        "import sys, cd2_status_plugin as p\n"
        "heavy = [m for m in ('cd2.status_page', 'fastapi', 'airflow.api_fastapi.core_api.security')"
        " if m in sys.modules]\n"
        "print(heavy, p.Cd2StatusPlugin.fastapi_apps[0]['url_prefix'])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "plugins"))
    result = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[]", status_page.URL_PREFIX]
