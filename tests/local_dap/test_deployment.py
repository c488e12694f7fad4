"""The real-scheduler harness itself: a run through /api/v2, its task instances, a log, a UI clear."""

from __future__ import annotations

import pytest

from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.deployment import Deployment, DeploymentError
from local_dap.truth import replica_truth

TABLE = "canvas.accounts"


def test_trigger_list_read_log_and_clear_one_mapped_task(postgres_server, database_url, dap_emulator):
    connections = {
        "dap_default": dap_connection(dap_emulator),
        "cd2_postgres": postgres_connection(database_url),
        "aws_default": {"conn_type": "aws"},
    }
    with Deployment.start(postgres_server, connections=connections, config={"include": [TABLE]}) as airflow:
        airflow.unpause()
        run_id = airflow.trigger(conf={"tables": [TABLE]})
        assert airflow.wait_for_run(run_id) == "success"
        tasks = {(ti.task_id, ti.label): ti for ti in airflow.task_instances(run_id)}
        assert tasks[("table.init", TABLE)].state == "success"
        sync = tasks[("table.sync", TABLE)]
        assert "init needed" in airflow.task_log(run_id, "table.sync", sync.try_number, sync.map_index)
        assert dap_emulator.truth("canvas", "accounts") == replica_truth(database_url, "canvas", "accounts")

        cleared = airflow.clear(run_id, [("table.sync", sync.map_index)])
        assert {(ti["task_id"], ti["map_index"]) for ti in cleared} >= {
            ("table.sync", sync.map_index),
            ("table.init", sync.map_index),
            ("notify", -1),
        }
        assert airflow.wait_for_run(run_id) == "success"
        again = {(ti.task_id, ti.label): ti for ti in airflow.task_instances(run_id)}
        assert again[("table.sync", TABLE)].try_number == sync.try_number + 1
        assert again[("list_tables", None)].try_number == tasks[("list_tables", None)].try_number
        with pytest.raises(DeploymentError, match="HTTP 404"):
            airflow.api("GET", "dags/no_such_dag")
