"""Table operators on a real deployment (scheduler, LocalExecutor, api-server): retries by error category."""

from __future__ import annotations

from datetime import timedelta

from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.deployment import Deployment
from local_dap.truth import replica_truth

TABLE = "canvas.accounts"


def test_an_unknown_error_is_retried_once_not_every_time(postgres_server, database_url, dap_emulator):
    dap_emulator.reset()
    # A schema answer that is not JSON: the client raises JSONDecodeError, which no rule knows.
    dap_emulator.inject_fault("malformed_json", endpoint="schema", table="accounts", times=None)
    connections = {
        "dap_default": dap_connection(dap_emulator),
        "cd2_postgres": postgres_connection(database_url),
        "aws_default": {"conn_type": "aws"},
    }
    # the DAG's 2-minute retry delay shortened for this deployment only: the test is about how often
    with Deployment.start(
        postgres_server,
        connections=connections,
        config={"include": [TABLE]},
        retry_delay=timedelta(seconds=1),
    ) as airflow:
        airflow.unpause()
        run_id = airflow.trigger(conf={"tables": [TABLE]})
        assert airflow.wait_for_run(run_id, timeout=900) == "failed"
        init = next(ti for ti in airflow.task_instances(run_id) if ti.task_id == "table.init")
        assert (init.state, init.try_number) == ("failed", 2)  # the DAG allows 3 retries
        log = airflow.task_log(run_id, "table.init", 2, init.map_index)
        assert "JSONDecodeError" in log and "retried once" in log

        dap_emulator.clear_faults()
        airflow.clear(run_id, [("table.sync", init.map_index)])
        assert airflow.wait_for_run(run_id, timeout=600) == "success"
    assert dap_emulator.truth("canvas", "accounts") == replica_truth(database_url, "canvas", "accounts")
