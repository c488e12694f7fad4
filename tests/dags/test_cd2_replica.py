"""cd2_replica end to end: ``airflow dags test`` in a subprocess, the DAP emulator over HTTP, a real
PostgreSQL, moto's SNS delivering to an SQS queue."""

from __future__ import annotations

import json
import os
import re
import subprocess
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from local_dap.airflow_home import AirflowEnvironment, DagRunResult, dap_connection, postgres_connection
from local_dap.truth import replica_truth
from tests.local_dap.emulator.conftest import run_library
from tests.support.log_noise import alarms
from tests.support.paths import DAP_PYTHON, REPO_ROOT

TABLES = ["canvas.accounts", "canvas.users"]
FRESH_ENOUGH = 24 * 365 * 10
# Takes a table's lock with the child's own code (cd2.dap_child.locks) and holds it until stdin closes.
HOLD_TABLE = """
import asyncio, os, sys
from cd2.dap_child import locks
async def hold():
    conn = await locks.connect_as(os.environ["CD2_DATABASE_URL"], sys.argv[2])
    await locks.lock_table(conn, sys.argv[1], 0)
    print("held", flush=True)
    await asyncio.to_thread(sys.stdin.read)
asyncio.run(hold())
"""


@contextmanager
def table_held(url: str, label: str, holder: str):
    """Another run (``holder``) working on ``label`` while the block runs."""
    env = os.environ | {"CD2_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT / "plugins")}
    with subprocess.Popen(
        [str(DAP_PYTHON), "-c", HOLD_TABLE, label, holder],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout.readline() == "held\n"
        try:
            yield
        finally:
            process.stdin.close()


@pytest.fixture
def replica(airflow_env, dap_emulator, postgres_server, sns, request):
    """Runs the DAG against a fresh database; checks truth, notifications and secrets."""
    dap_emulator.reset()
    dap_emulator.clear_faults()
    sns.received()
    return Replica(airflow_env, dap_emulator, postgres_server, sns, request.node.name[5:40])


class Replica:
    def __init__(self, airflow_env: AirflowEnvironment, emulator, server, sns, name: str) -> None:
        self.airflow, self.emulator, self.server, self.sns = airflow_env, emulator, server, sns
        self.database = name
        self.url = server.create_database(name)
        self.secrets = [emulator.client_secret, server.password, quote(server.password, safe="")]

    def connections(self) -> dict:
        return {
            "dap_default": dap_connection(self.emulator),
            "cd2_postgres": postgres_connection(self.url + "?sslmode=disable"),
            "aws_default": self.sns.connection,
        }

    def asset_uri(self, label: str) -> str:
        """The table's asset URI: the postgres provider's convention, host:port/database/schema/table."""
        namespace, table = label.split(".")
        return f"postgres://{self.server.host}:{self.server.port}/{self.database}/{namespace}/{table}"

    def run(
        self, config: dict | None = None, conf: dict | None = None, env: dict | None = None
    ) -> tuple[DagRunResult, dict]:
        """One DAG run; returns it and the facts of the one notification it published."""
        # The emulator's clock starts on 2026-01-01: a bound this wide keeps its tables fresh.
        config = {
            "include": ["accounts", "canvas.users"],
            "sns_topic_arn": self.sns.topic_arn,
            "freshness_hours": FRESH_ENOUGH,
        } | (config or {})
        result = self.airflow.dags_test(
            connections=self.connections(), config=config, conf=conf, env=self.sns.env | (env or {})
        )
        assert result.run_id, result.output[-5000:]
        notes = self.sns.received()
        assert len(notes) == 1, f"expected one notification, got {len(notes)}:\n{result.output[-5000:]}"
        self.assert_no_secret(result, notes)
        return result, notes[0]

    def rerun(self, task_id: str, run_id: str, map_index: int):
        """Run one task instance of an existing run again; its output must hold no secret either."""
        config = {"include": ["accounts", "canvas.users"]}
        completed = self.airflow.tasks_test(
            task_id,
            run_id,
            map_index=map_index,
            connections=self.connections(),
            config=config,
            env=self.sns.env,
        )
        assert not any(secret in completed.stdout for secret in self.secrets)
        return completed

    def assert_no_secret(self, result: DagRunResult, notes: list[dict]) -> None:
        places = {
            # ``airflow dags test`` writes the task logs to its output.
            "task logs": result.output + self.airflow.task_logs(result.run_id),
            "XComs": json.dumps(self.airflow.xcoms(result.run_id), default=str),
            "SNS message": json.dumps(notes),
        }
        for place, text in places.items():
            for secret in self.secrets:
                assert secret not in text, f"a secret appears in the {place}"

    def assert_in_step(self, tables: list[str]) -> None:
        for label in tables:
            namespace, table = label.split(".")
            assert self.emulator.truth(namespace, table) == replica_truth(self.url, namespace, table), label

    def snapshot(self) -> tuple:
        """What a plan run must leave as it was: the metadata rows, and every replica table's truth."""
        with self.server.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute("SELECT * FROM instructure_dap.table_sync ORDER BY source_namespace, source_table")
            table_sync = cur.fetchall()
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
                "NOT IN ('pg_catalog', 'information_schema', 'cd2_replica') ORDER BY 1, 2"
            )
            tables = cur.fetchall()
        truths = [replica_truth(self.url, schema, name) for schema, name in tables if schema == "canvas"]
        return table_sync, tables, truths

    def break_half_way(self, table: str) -> None:
        """Leave ``table`` as an init killed mid-load does: some rows, no table_sync row."""
        with self.server.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM canvas.{table} WHERE id % 2 = 0")
            cur.execute("DELETE FROM instructure_dap.table_sync WHERE source_table = %s", (table,))


def test_first_run_initializes_second_syncs_and_params_restrict_and_reinit(replica):
    first, note = replica.run()
    assert first.state == "success"
    assert first.states("table.sync") == dict.fromkeys(TABLES, "success")
    assert first.states("table.init") == dict.fromkeys(TABLES, "success")
    for index in range(len(TABLES)):
        assert replica.airflow.xcom(first.run_id, "table.sync", map_index=index)["outcome"] == "init_needed"
        assert replica.airflow.xcom(first.run_id, "table.init", map_index=index)["outcome"] == "initialized"
    assert first.state_of("fail_if_any_table_failed") == "skipped"
    assert "[dap] INFO dap.replicator.sql_op_init: Inserted 30 records" in first.output  # child log relayed
    replica.assert_in_step(TABLES)
    assert note["Subject"] == "cd2_replica: nothing needs you; 0 synced, 2 initialized, 0 failed, 0 skipped"
    assert note["facts"]["counts"] == {"synced": 0, "initialized": 2, "failed": 0, "skipped": 0}
    assert note["facts"]["run_id"] == first.run_id

    uris = {label: replica.asset_uri(label) for label in TABLES}
    events = replica.airflow.asset_events(first.run_id)
    assert [(uri, task) for uri, task, _ in events] == [(uris[t], "table.init") for t in TABLES]
    assert {e[2]["action"] for e in events} == {"initialized"}
    assert all(e[2]["rows"] and e[2]["watermark"] and e[2]["schema_version"] for e in events)

    replica.emulator.advance(changes=10, tables=["canvas.accounts"])
    # Another run is working on canvas.users (a long init overlapping this one): busy, not failed.
    with table_held(replica.url, "canvas.users", "cd2_replica manual__long_init"):
        second, note = replica.run(env={"AIRFLOW__CD2__LOCK_WAIT_SECONDS": "2"})
    # Only the table that changed emits an event: a downstream DAG on canvas.users does not run.
    events = replica.airflow.asset_events(second.run_id)
    assert [(uri, task, extra["action"]) for uri, task, extra in events] == [
        (uris["canvas.accounts"], "table.sync", "synced")
    ]
    assert second.state == "success"
    assert second.states("table.sync") == dict.fromkeys(TABLES, "success")
    # The gate: each init skipped itself after reading its own table's sync result. An Airflow upgrade
    # that changes skipping inside mapped task groups shows up here.
    assert second.states("table.init") == dict.fromkeys(TABLES, "skipped")
    replica.assert_in_step(TABLES)
    assert note["facts"]["counts"] == {"synced": 1, "initialized": 0, "failed": 0, "skipped": 0, "busy": 1}
    assert (
        note["Subject"]
        == "cd2_replica: nothing needs you; 1 synced, 0 initialized, 0 failed, 0 skipped, 1 busy"
    )
    assert note["facts"]["needs_you"] == []
    users = next(t for t in note["facts"]["tables"] if t["table"] == "canvas.users")
    busy = r"busy: worked on by cd2_replica manual__long_init since \d{4}-\d\d-\d\dT[\d:.]+\+00:00"
    assert users["outcome"] == "busy" and users["error"] is None and re.fullmatch(busy, users["note"])
    assert re.search(rf"canvas\.users: busy in \S+ \({busy}\)", second.output)  # the notification's text
    # A healthy run logs no ERROR or WARNING.
    false_alarms = alarms(
        (second.output + replica.airflow.task_logs(second.run_id)).splitlines(), replica.server
    )
    assert not false_alarms, "\n".join(false_alarms[:20])
    rows = {t["table"]: t["rows"] for t in note["facts"]["tables"]}
    assert rows["canvas.accounts"] and not rows["canvas.users"]

    replica.emulator.advance(changes=10)
    third, note = replica.run(conf={"tables": ["accounts"], "force_reinit": ["canvas.accounts"]})
    assert third.state == "success"
    assert replica.airflow.xcom(third.run_id, "list_tables") == ["canvas.accounts"]
    assert third.states("table.init") == {"canvas.accounts": "success"}
    assert replica.airflow.xcom(third.run_id, "table.sync", map_index=0)["reason"] == "force_reinit"
    replica.assert_in_step(["canvas.accounts"])
    assert note["facts"]["counts"] == {"synced": 0, "initialized": 1, "failed": 0, "skipped": 0}


def test_a_failing_table_spares_the_others_fails_the_run_and_a_rerun_recovers(replica):
    replica.emulator.inject_fault("not_found", endpoint="schema", table="users", times=None)
    failed, note = replica.run()
    assert failed.state == "failed"
    assert failed.states("table.init") == {"canvas.accounts": "success", "canvas.users": "failed"}
    assert failed.state_of("notify") == "success"
    assert failed.state_of("fail_if_any_table_failed") == "failed"
    # The watcher fails the run only after the notification went out.
    times = replica.airflow.task_times(failed.run_id)
    assert times[("fail_if_any_table_failed", -1)][0] >= times[("notify", -1)][1]
    replica.assert_in_step(["canvas.accounts"])
    assert note["facts"]["counts"] == {"synced": 0, "initialized": 1, "failed": 1, "skipped": 0}
    users = next(t for t in note["facts"]["tables"] if t["table"] == "canvas.users")
    assert users["outcome"] == "failed" and "NotFoundError" in users["error"]
    assert note["Subject"].startswith("cd2_replica: NEEDS YOU (1: canvas.users); ")
    assert "1 failed" in note["Subject"]
    opening = note["facts"]["needs_you"]
    assert [item["table"] for item in opening] == ["canvas.users"] and "NotFoundError" in opening[0][
        "problem"
    ]

    # The fault is gone; re-running users' two tasks of that run (as clearing them in the UI does)
    # initializes it.
    replica.emulator.clear_faults()
    for task_id in ("table.sync", "table.init"):
        rerun = replica.rerun(task_id, failed.run_id, map_index=1)
        assert rerun.returncode == 0, rerun.stdout[-5000:]
    replica.assert_in_step(TABLES)

    # Next run: accounts was left half-initialized by a killed init, users is initialized.
    replica.emulator.advance(changes=10)
    replica.break_half_way("accounts")
    check_a_plan_run(replica)
    recovered, note = replica.run()
    assert recovered.state == "success"
    assert recovered.states("table.init") == {"canvas.accounts": "success", "canvas.users": "skipped"}
    replica.assert_in_step(TABLES)
    assert note["facts"]["counts"] == {"synced": 1, "initialized": 1, "failed": 0, "skipped": 0}


def test_unknown_table_fails_the_list_task_naming_it(replica):
    result, note = replica.run(conf={"tables": ["canvas.no_such_table"]})
    assert result.state == "failed"
    assert result.state_of("list_tables") == "failed"
    assert "param 'tables': 'canvas.no_such_table' matches no table" in result.output
    assert "FAILED before any table ran" in note["Subject"]


def test_nothing_to_do_is_a_successful_run_that_says_so(replica):
    result, note = replica.run(config={"include": [], "exclude": ["*"]})
    assert result.state == "success"
    assert replica.airflow.xcom(result.run_id, "list_tables") == []
    assert note["Subject"] == "cd2_replica: nothing needs you; nothing to do"
    assert note["facts"]["tables"] == []


def test_a_target_server_older_than_16_3_is_warned_about_in_the_task_log_and_notification(replica):
    """Against the session's server: a warning on one older than 16.3 (CI's pass on PostgreSQL 15), none
    on a supported one (the wheel's)."""
    result, note = replica.run(config={"include": ["accounts"]})
    assert result.state == "success"
    version = replica.server.server_version
    expected = f"The target PostgreSQL server is version {version}, older than 16.3"
    logged = result.output + replica.airflow.task_logs(result.run_id)
    if replica.server.server_version_num < 160003:
        assert f"[dap] WARNING cd2.dap_child: {expected}" in logged
        assert [w.startswith(expected) for w in note["facts"]["warnings"]] == [True]  # the SNS facts
        assert note["facts"]["tables"][0]["warning"].startswith(expected)
    else:
        assert "older than 16.3" not in logged
        assert note["facts"]["warnings"] == [] and note["facts"]["tables"][0]["warning"] is None


PLANNED = {
    "canvas.accounts": ("init", "half-initialized leftover"),
    "canvas.assignments": ("init", "not in the replica"),
    "canvas.courses": ("reinit", "watermark older than the API's retention (1h)"),
    "canvas.enrollments": ("sync", "schema change: version 1 -> 2"),
    "canvas.pseudonyms": ("reinit", "force_reinit"),
    "canvas.users": ("sync", "initialized"),
}


def check_a_plan_run(replica: Replica) -> None:
    """A plan run over a half-initialized, a missing, a too-old, a schema-behind, a forced and a current
    table: the right action for each, no job created, nothing changed. (Part of the test above: its
    replica already holds the half-initialized and the current table.)"""
    for table in ("courses", "enrollments", "pseudonyms"):
        assert run_library(replica.emulator, "init", "canvas", table, replica.url)["ok"]
    replica.emulator.bump_schema("canvas", "enrollments", "add_column")
    # courses' watermark falls out of the API's retention (the emulator's clock moves 1 h a step).
    replica.emulator.configure(retention_hours={"canvas.courses": 1})
    replica.emulator.advance(changes=1, steps=2, tables=["canvas.courses"])
    before = replica.snapshot()
    replica.emulator.clear_requests()

    plan, note = replica.run(
        config={
            "include": [label.split(".")[1] for label in PLANNED],
            "retention_hours": {"canvas.courses": 1},
        },
        conf={"plan": True, "force_reinit": ["canvas.pseudonyms"]},
    )
    assert plan.state == "success"
    assert plan.states("table.init") == dict.fromkeys(PLANNED, "skipped")
    endpoints = {r["endpoint"] for r in replica.emulator.requests()}
    assert endpoints <= {"login", "list", "schema"}, endpoints  # no job created (no "data" call)
    schema_calls = sorted(
        f"canvas.{r['table']}" for r in replica.emulator.requests() if r["endpoint"] == "schema"
    )
    assert schema_calls == sorted(PLANNED)
    assert replica.snapshot() == before
    assert replica.airflow.asset_events(plan.run_id) == []

    labels = replica.airflow.xcom(plan.run_id, "list_tables")
    records = {
        label: replica.airflow.xcom(plan.run_id, "table.sync", map_index=index)
        for index, label in enumerate(labels)
    }
    for label, (action, reason) in PLANNED.items():
        assert records[label]["outcome"] == "planned", records[label]
        assert records[label]["plan"]["action"] == action, (label, records[label])
        assert records[label]["plan"]["reason"].startswith(reason), (label, records[label])
    assert records["canvas.users"]["plan"] | {"reason": None} == {
        "action": "sync", "reason": None, "rows": 30, "local_schema_version": 1, "api_schema_version": 1,
    }  # fmt: skip
    assert records["canvas.assignments"]["plan"]["rows"] is None
    assert records["canvas.accounts"]["plan"]["rows"] < 30  # the leftover's
    assert records["canvas.users"]["watermark_before"]

    assert note["Subject"] == (
        "cd2_replica: PLAN, nothing changed; nothing needs you; 2 init, 2 reinit, 2 sync, 0 nothing"
    )
    assert note["facts"]["plan"] is True
    assert note["facts"]["planned"] == {"init": 2, "reinit": 2, "sync": 2, "nothing": 0}
    told = {t["table"]: t["plan"]["action"] for t in note["facts"]["tables"]}
    assert told == {label: action for label, (action, _) in PLANNED.items()}
    text = plan.output  # the notification's text is in notify's log
    assert "PLAN run " in text and "no table was changed and no job created" in text
    assert "canvas.courses: would re-init (watermark older than the API's retention (1h))" in text
    assert "canvas.enrollments: would sync (schema change: version 1 -> 2" in text
    assert "schema v1 local / v2 API" in text
    assert "canvas.assignments: would init (not in the replica); watermark -, lag -, - rows" in text

    # The prediction holds: the API refuses courses' changes since its watermark (a run re-inits it).
    assert run_library(replica.emulator, "sync", "canvas", "courses", replica.url)["error_type"] == (
        "OutOfRangeError"
    )
