"""The DAG on a real deployment (local_dap.deployment): concurrency, pacing and the UI's clear path.

One deployment and one rate-limited emulator for the module: a first run of every table at once
against an empty database, then a clear of one table in that finished run, then the status page
(plugins/cd2/status_page/) as the API server serves it.
"""

from __future__ import annotations

import json
from datetime import UTC

import psycopg2
import pytest

from cd2.hooks.dap import RELAYED_PREFIX
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator, write_extra_tables
from local_dap.deployment import Deployment
from local_dap.emulator.builtin import builtin_tables
from local_dap.truth import replica_truth

# The emulator's limits at this scale: 5 jobs per 10 s, so 16 tables must wait; the pacer is told the same window.
TIME_SCALE = 6
NAMESPACES = ["canvas", "canvas_logs", "catalog"]
BUILTIN_TABLES = len(builtin_tables())
# The emulator's data is dated 2026-01-01: every table is stale under the default bound but this one.
FRESH_TABLE = "canvas.users"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The built-in tables and 6 more: 16 tables at once, more than the create-job budget gives at once."""
    schemas = tmp_path_factory.mktemp("schemas")
    write_extra_tables(16 - BUILTIN_TABLES, schemas)
    with start_emulator(rows=20, rate_limits=True, time_scale=TIME_SCALE, schemas=schemas) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def target(postgres_server) -> str:
    return postgres_server.create_database("t_real_scheduler")


@pytest.fixture(scope="module")
def airflow(postgres_server, emulator, target):
    connections = {
        "dap_default": dap_connection(emulator),
        "cd2_postgres": postgres_connection(target),
        "aws_default": {"conn_type": "aws"},
    }
    config = {
        "namespaces": NAMESPACES,
        "api_limit_window_seconds": 60 / TIME_SCALE,
        "freshness_hours": {FRESH_TABLE: 1_000_000},
    }
    env = {"AIRFLOW__CD2__MAX_ACTIVE_TABLES": "16"}
    with Deployment.start(postgres_server, connections=connections, config=config, env=env) as airflow:
        airflow.unpause()
        yield airflow


@pytest.fixture(scope="module")
def first_run(airflow, emulator) -> str:
    emulator.clear_requests()
    run_id = airflow.trigger()
    airflow.wait_for_run(run_id, timeout=900)
    return run_id


def labels(airflow, run_id) -> list[str]:
    return sorted(ti.label for ti in airflow.task_instances(run_id) if ti.task_id == "table.sync")


def why_it_failed(airflow, ti, task_log: str, lines=25) -> str:
    """The end of a try's log and what the scheduler said of that task instance."""
    scheduler = [
        line
        for line in airflow.component_log("scheduler").splitlines()
        if f"map_index={ti.map_index}" in line and ti.task_id in line
    ][-lines:]
    return "\n".join([*task_log.splitlines()[-lines:], "-- scheduler --", *scheduler])


def assert_replica_equals_truth(emulator, target, tables):
    for label in tables:
        namespace, table = label.split(".")
        assert emulator.truth(namespace, table) == replica_truth(target, namespace, table), label


def test_a_first_run_of_every_table_at_once_initializes_all_without_a_429(
    airflow, emulator, target, first_run
):
    assert airflow.run_state(first_run) == "success"
    tables = labels(airflow, first_run)
    assert len(tables) == 16
    inits = [ti for ti in airflow.task_instances(first_run) if ti.task_id == "table.init"]
    assert {ti.state for ti in inits} == {"success"}
    # No retry either, unless Airflow's: a try whose task process failed before it started the table's
    # child (a loaded machine) is retried by the scheduler; one that started the child must not fail.
    first_tries = {
        ti: airflow.task_log(first_run, ti.task_id, 1, ti.map_index) for ti in inits if ti.try_number != 1
    }
    failed_in_child = {
        ti.label: why_it_failed(airflow, ti, log) for ti, log in first_tries.items() if RELAYED_PREFIX in log
    }
    assert failed_in_child == {}
    with psycopg2.connect(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT source_namespace || '.' || source_table FROM instructure_dap.table_sync")
        assert sorted(row[0] for row in cur.fetchall()) == tables
    assert_replica_equals_truth(emulator, target, tables)
    logs = [airflow.task_log(first_run, ti.task_id, ti.try_number, ti.map_index) for ti in inits]
    assert any("for the DAP API's create-job budget" in log for log in logs)  # the pacer did pace
    statuses = [request["status"] for request in emulator.requests()]
    assert statuses.count(429) == 0
    assert sum(1 for r in emulator.requests() if r["endpoint"] == "data") == len(tables)


def test_clearing_one_table_reruns_exactly_its_tasks_notify_and_the_watcher(
    airflow, emulator, target, first_run
):
    before = {(ti.task_id, ti.map_index): ti.try_number for ti in airflow.task_instances(first_run)}
    sync = next(
        ti
        for ti in airflow.task_instances(first_run)
        if ti.label == "canvas.users" and ti.task_id == "table.sync"
    )
    emulator.advance(changes=10)
    cleared = airflow.clear(first_run, [("table.sync", sync.map_index)])
    assert {(ti["task_id"], ti["map_index"]) for ti in cleared} == {
        ("table.sync", sync.map_index),
        ("table.init", sync.map_index),
        ("notify", -1),
        ("fail_if_any_table_failed", -1),
    }
    assert airflow.wait_for_run(first_run, timeout=600) == "success"
    after = {(ti.task_id, ti.map_index): ti.try_number for ti in airflow.task_instances(first_run)}
    rerun = {key for key in after if after[key] != before[key]}
    assert rerun <= {
        ("table.sync", sync.map_index),
        ("table.init", sync.map_index),
        ("notify", -1),
        ("fail_if_any_table_failed", -1),
    }
    assert ("table.sync", sync.map_index) in rerun and ("notify", -1) in rerun
    assert_replica_equals_truth(emulator, target, ["canvas.users"])


def test_the_status_page_shows_each_table_as_the_replica_and_its_last_run_have_it(airflow, target, first_run):
    assert airflow.fetch("cd2-status/api/tables", auth=None)[0] == 401
    status, headers, _ = airflow.fetch("cd2-status/", auth=None)
    assert status == 307 and headers["location"].startswith("/auth/login")  # 3.2.1: no ?next=

    status, _, body = airflow.fetch("cd2-status/api/tables")
    assert status == 200
    page = json.loads(body)
    assert page["problems"] == []
    shown = {row["table"]: row for row in page["tables"]}
    replica = {}
    with psycopg2.connect(target) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT source_namespace, source_table, timestamp, schema_version FROM instructure_dap.table_sync"
        )
        for namespace, table, watermark, version in cur.fetchall():
            cur.execute(f'SELECT count(*) FROM "{namespace}"."{table}"')
            replica[f"{namespace}.{table}"] = (
                watermark.replace(tzinfo=UTC).isoformat(),
                version,
                cur.fetchone()[0],
            )
    assert len(replica) == 16
    assert {
        label: (row["watermark"], row["schema_version"], row["rows"]) for label, row in shown.items()
    } == replica

    tis = {(ti.task_id, ti.label): ti for ti in airflow.task_instances(first_run)}
    cleared = tis[("table.sync", FRESH_TABLE)].try_number > 1  # by the test above
    for label, row in shown.items():
        expected = (
            ("synced", "table.sync") if label == FRESH_TABLE and cleared else ("initialized", "table.init")
        )
        assert (row["outcome"], row["task_id"]) == expected, label
        assert (row["run_id"], row["map_index"]) == (first_run, tis[(row["task_id"], label)].map_index)
        assert row["stale"] is (label != FRESH_TABLE), label
        assert row["freshness_hours"] == (1_000_000 if label == FRESH_TABLE else 12)

    status, headers, text = airflow.fetch("cd2-status/", auth="cookie")  # as the UI's embedded view asks
    assert status == 200 and headers["content-type"].startswith("text/html")
    for label, row in shown.items():
        assert f"<td>{label}</td>" in text
        assert f'href="../{row["ui_path"]}" target="_top">{first_run}</a>' in text
    assert text.count('<tr class="stale">') == 15
    views = [view for plugin in airflow.api("GET", "plugins")["plugins"] for view in plugin["external_views"]]
    assert {"name": "CD2 replica", "href": "cd2-status/", "url_route": "cd2-status"}.items() <= next(
        view for view in views if view["href"] == "cd2-status/"
    ).items()
