"""cd2_replica end to end: ``airflow dags test`` in a subprocess, the DAP emulator over HTTP, a real
PostgreSQL, moto's SNS delivering to an SQS queue."""

from __future__ import annotations

import re

import pytest

from tests.dags.replica import Replica, table_held
from tests.local_dap.emulator.conftest import run_library
from tests.support.log_noise import alarms

TABLES = ["canvas.accounts", "canvas.users"]


@pytest.fixture
def replica(airflow_env, dap_emulator, postgres_server, sns, request):
    """Runs the DAG against a fresh database; checks truth, notifications and secrets."""
    dap_emulator.reset()
    dap_emulator.clear_faults()
    sns.received()
    return Replica(airflow_env, dap_emulator, postgres_server, sns, request.node.name[5:40])


def test_first_run_initializes_second_syncs_and_params_restrict_and_reinit(replica):
    first, note = replica.run()
    assert first.state == "success"
    # One reading of cd2_config per run: list_tables hands each table its job and notify its settings.
    assert first.output.count("Parsing the Variable cd2_config") == 1, first.output[-3000:]
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
        "rows_kept": None,
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
