"""Several Canvas instances in one deployment ([cd2] instances): each its own DAG, connections, Variable,
database and API budget, on a real deployment (local_dap.deployment) with both running at once; and two
instances configured to one database refused, naming both and the database."""

from __future__ import annotations

import json

import psycopg2
import pytest

from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator, write_extra_tables
from local_dap.deployment import Deployment
from local_dap.truth import replica_truth
from tests.dags.replica import Replica

# Each emulator enforces the published limits 6 times faster (5 jobs per 10 s); each instance has more
# tables than one window's create-job budget, so each pacer must pace.
TIME_SCALE = 6
INSTANCES = ("default", "ce")
DAG_IDS = {"default": "cd2_replica", "ce": "cd2_replica_ce"}
EXTRA_TABLES = 6


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    """One emulator per instance, each with its own credentials; the second serves 6 more tables."""
    schemas = tmp_path_factory.mktemp("schemas")
    extra = write_extra_tables(EXTRA_TABLES, schemas)
    with (
        start_emulator(rows=20, rate_limits=True, time_scale=TIME_SCALE) as default,
        start_emulator(seed=1, rows=20, rate_limits=True, time_scale=TIME_SCALE, schemas=schemas) as ce,
    ):
        assert default.client_id != ce.client_id
        yield {"default": default, "ce": ce}, extra


@pytest.fixture(scope="module")
def targets(postgres_server) -> dict[str, str]:
    return {name: postgres_server.create_database(f"t_instance_{name}") for name in INSTANCES}


@pytest.fixture(scope="module")
def airflow(postgres_server, emulators, targets):
    served, extra = emulators
    connections = {
        "dap_default": dap_connection(served["default"]),
        "cd2_postgres": postgres_connection(targets["default"]),
        "dap_ce": dap_connection(served["ce"]),
        "cd2_postgres_ce": postgres_connection(targets["ce"]),
        "aws_default": {"conn_type": "aws"},
    }
    window = {"api_limit_window_seconds": 60 / TIME_SCALE, "freshness_hours": 1_000_000}
    config = {"namespaces": ["canvas", "canvas_logs", "catalog"]} | window
    variables = {"cd2_config_ce": {"namespaces": ["canvas"], "include": extra} | window}
    env = {"AIRFLOW__CD2__MAX_ACTIVE_TABLES": "16"}
    with Deployment.start(
        postgres_server,
        connections=connections,
        config=config,
        variables=variables,
        instances=INSTANCES,
        env=env,
    ) as airflow:
        for dag_id in DAG_IDS.values():
            airflow.unpause(dag_id)
        yield airflow


@pytest.fixture(scope="module")
def runs(airflow, emulators) -> dict[str, str]:
    """Both instances' first runs, triggered together."""
    served, _ = emulators
    for emulator in served.values():
        emulator.clear_requests()
    started = {name: airflow.trigger(dag_id=dag_id) for name, dag_id in DAG_IDS.items()}
    for name, run_id in started.items():
        airflow.wait_for_run(run_id, timeout=900, dag_id=DAG_IDS[name])
    return started


def tables_of(airflow, name, run_id) -> list[str]:
    tis = airflow.task_instances(run_id, dag_id=DAG_IDS[name])
    return sorted(ti.label for ti in tis if ti.task_id == "table.sync")


def test_two_instances_run_at_once_each_to_its_own_replica_within_its_own_budget(
    airflow, emulators, targets, runs
):
    served, extra = emulators
    listed = {name: tables_of(airflow, name, run_id) for name, run_id in runs.items()}
    for name, run_id in runs.items():
        assert airflow.run_state(run_id, dag_id=DAG_IDS[name]) == "success", name
    assert listed["ce"] == sorted(extra)
    assert len(listed["default"]) == 10 and not set(listed["default"]) & set(extra)
    for name, tables in listed.items():
        for label in tables:
            namespace, table = label.split(".")
            truth = served[name].truth(namespace, table)
            assert truth == replica_truth(targets[name], namespace, table), (name, label)
        with psycopg2.connect(targets[name]) as conn, conn.cursor() as cur:
            cur.execute("SELECT source_namespace || '.' || source_table FROM instructure_dap.table_sync")
            assert sorted(row[0] for row in cur.fetchall()) == tables, name

    # Each emulator: its own tables' jobs only, no 429, and the two runs' jobs overlapped in time.
    jobs = {}
    for name, emulator in served.items():
        requests = emulator.requests()
        assert [r for r in requests if r["status"] == 429] == [], name
        jobs[name] = [r["time"] for r in requests if r["endpoint"] == "data"]
        assert len(jobs[name]) == len(listed[name]), name
    assert min(jobs["default"]) < max(jobs["ce"]) and min(jobs["ce"]) < max(jobs["default"])

    # One budget store (the first instance's database), one budget per client id in it.
    with psycopg2.connect(targets["default"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT client_key) FROM cd2_replica.api_calls")
        assert cur.fetchone()[0] == 2
    with psycopg2.connect(targets["ce"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('cd2_replica.api_calls')")
        assert cur.fetchone()[0] is None


def test_the_status_page_lists_both_instances_tables_each_linked_to_its_own_dag(airflow, targets, runs):
    status, _, body = airflow.fetch("cd2-status/api/tables")
    assert status == 200
    page = json.loads(body)
    assert page["problems"] == []
    shown = {(row["instance"], row["table"]): row for row in page["tables"]}
    for name, run_id in runs.items():
        tables = tables_of(airflow, name, run_id)
        assert sorted(table for instance, table in shown if instance == name) == tables, name
        for table in tables:
            row = shown[(name, table)]
            assert (row["dag_id"], row["run_id"], row["outcome"]) == (DAG_IDS[name], run_id, "initialized")
            assert row["ui_path"].startswith(f"dags/{DAG_IDS[name]}/runs/")
            with psycopg2.connect(targets[name]) as conn, conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {table}")
                assert row["rows"] == cur.fetchone()[0], (name, table)

    status, _, text = airflow.fetch("cd2-status/", auth="cookie")
    assert status == 200
    assert "<th>Instance</th>" in text
    for (name, table), row in shown.items():
        assert f"<td>{name}</td><td>{table}</td>" in text
        assert f'href="../{row["ui_path"]}" target="_top">{runs[name]}</a>' in text


class SharedDatabaseReplica(Replica):
    """A deployment whose second instance, ce, is configured to the default instance's database."""

    def connections(self) -> dict:
        return super().connections() | {"cd2_postgres_ce": postgres_connection(self.url)}


def test_two_instances_configured_to_one_database_are_refused_naming_both_and_the_database(
    airflow_env, dap_emulator, postgres_server, sns
):
    dap_emulator.reset()
    sns.received()
    replica = SharedDatabaseReplica(airflow_env, dap_emulator, postgres_server, sns, "t_instances_shared")
    result, note = replica.run(env={"AIRFLOW__CD2__INSTANCES": "default,ce"})
    assert result.state == "failed"
    assert result.state_of("list_tables") == "failed"
    assert result.state_of("notify") == "success"
    said = (
        "instances 'default' and 'ce' both write database 't_instances_shared' on "
        f"{postgres_server.host}:{postgres_server.port}"
    )
    assert said in result.output
    assert said in note["facts"]["problem"]
    assert "FAILED before any table ran" in note["Subject"]
    with psycopg2.connect(replica.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('instructure_dap.table_sync')")
        assert cur.fetchone()[0] is None  # refused before any table was touched
