"""Under the real scheduler: a DAG scheduled on one table's asset runs after a run that changed that
table, not after one that did not; a healthy run's component and task logs hold no false alarms."""

from __future__ import annotations

import textwrap
import time

from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.deployment import Deployment
from local_dap.paths import REPO_ROOT
from tests.support.log_noise import alarms

TABLES = ["canvas.accounts", "canvas.users"]
CONSUMER = "users_report"


def consumer_dag(uri: str) -> str:
    return textwrap.dedent(f'''
        from datetime import datetime
        from airflow.sdk import Asset, dag, task

        @dag(dag_id="{CONSUMER}", schedule=[Asset("{uri}")], start_date=datetime(2025, 1, 1), catchup=False)
        def users_report():
            @task
            def build():
                return "built"

            build()

        users_report()
    ''')


def consumer_runs(airflow: Deployment) -> list[dict]:
    return airflow.api("GET", f"dags/{CONSUMER}/dagRuns")["dag_runs"]


def settle(airflow: Deployment, expected: int, timeout: float = 90) -> list[dict]:
    """The consumer's runs once ``expected`` exist and are finished (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = consumer_runs(airflow)
        done = [run for run in runs if run["state"] in ("success", "failed")]
        if (len(runs) >= expected and len(done) == len(runs)) or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def test_a_consumer_of_one_table_runs_only_when_that_table_changed(
    postgres_server, database_url, dap_emulator, tmp_path
):
    dap_emulator.reset()
    host, port, database = postgres_server.host, postgres_server.port, database_url.rsplit("/", 1)[1]
    (tmp_path / "cd2_replica.py").symlink_to(REPO_ROOT / "dags" / "cd2_replica.py")
    (tmp_path / "users_report.py").write_text(
        consumer_dag(f"postgres://{host}:{port}/{database}/canvas/users")
    )
    connections = {
        "dap_default": dap_connection(dap_emulator),
        "cd2_postgres": postgres_connection(database_url),
        "aws_default": {"conn_type": "aws"},
    }
    config = {"include": TABLES, "freshness_hours": 24 * 365 * 10}
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path)}
    with Deployment.start(postgres_server, connections=connections, config=config, env=env) as airflow:
        airflow.wait_for_dag(CONSUMER)
        airflow.unpause(CONSUMER)
        airflow.unpause()

        first = airflow.trigger()
        assert airflow.wait_for_run(first) == "success"
        runs = settle(airflow, 1)
        assert len(runs) == 1 and runs[0]["state"] == "success", runs  # users was initialized

        dap_emulator.advance(changes=10, tables=["canvas.accounts"])
        second = airflow.trigger()
        assert airflow.wait_for_run(second) == "success"
        assert len(settle(airflow, 2, timeout=30)) == 1  # only accounts changed: no consumer run

        # The second run was healthy: no ERROR or WARNING line in any component's or task's log.
        texts = [airflow.component_log(component) for component in ("scheduler", "dag-processor")]
        texts += [
            airflow.task_log(second, ti.task_id, ti.try_number, ti.map_index)
            for ti in airflow.task_instances(second)
            if ti.try_number
        ]
        found = alarms("\n".join(texts).splitlines(), postgres_server)
        assert not found, "\n".join(found[:20])

        dap_emulator.advance(changes=10, tables=["canvas.users"])
        third = airflow.trigger()
        assert airflow.wait_for_run(third) == "success"
        assert len(settle(airflow, 2)) == 2
