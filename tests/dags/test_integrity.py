"""Every file under dags/ loads with DagBag, and cd2_replica follows the team's DAG rules."""

from __future__ import annotations

import json
import subprocess

import pytest

from local_dap.airflow_home import AIRFLOW_PYTHON, AirflowEnvironment

PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="{dags}")
dag = bag.dags.get("cd2_replica")
facts = None
if dag is not None:
    sync = dag.get_task("table.sync")
    facts = {{
        "files": sorted({{d.fileloc for d in bag.dags.values()}}),
        "schedule": str(dag.schedule),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tags": sorted(dag.tags),
        "doc": bool(dag.doc_md),
        "owner": dag.default_args.get("owner"),
        "retries": dag.default_args.get("retries"),
        "backoff": dag.default_args.get("retry_exponential_backoff"),
        "params": sorted(dag.params.keys()),
        "tasks": sorted(dag.task_ids),
        "map_index_template": sync.map_index_template,
    }}
print(json.dumps({{"errors": {{k: str(v) for k, v in bag.import_errors.items()}}, "dags": sorted(bag.dags), "facts": facts}}))
"""


def load(airflow_env: AirflowEnvironment, extra_env: dict[str, str] | None = None) -> dict:
    env = airflow_env.base_env() | (extra_env or {})
    dags = env["AIRFLOW__CORE__DAGS_FOLDER"]
    completed = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", PROBE.format(dags=dags)], env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_every_dag_file_loads_without_import_errors(airflow_env):
    loaded = load(airflow_env)
    assert loaded["errors"] == {}
    assert loaded["dags"] == ["cd2_replica"]
    facts = loaded["facts"]
    assert facts["schedule"] == "0 */4 * * *"
    assert (facts["catchup"], facts["max_active_runs"], facts["doc"]) == (False, 1, True)
    assert facts["tags"] and facts["owner"] and facts["retries"] >= 1 and facts["backoff"]
    assert facts["params"] == ["force_reinit", "plan", "tables"]
    assert facts["tasks"] == ["fail_if_any_table_failed", "list_tables", "notify", "table.init", "table.sync"]
    assert facts["map_index_template"] == "{{ task.table_label }}"


def test_schedule_comes_from_airflow_configuration(airflow_env):
    loaded = load(airflow_env, {"AIRFLOW__CD2__SCHEDULE": "30 1 * * *"})
    assert loaded["facts"]["schedule"] == "30 1 * * *"


@pytest.mark.parametrize(
    "option, value",
    [("max_active_tables", "0"), ("lock_wait_seconds", "-1"), ("schedule", "every 4 hours")],
)
def test_a_cd2_option_out_of_range_fails_the_import_naming_the_option_and_the_value(
    airflow_env, option, value
):
    loaded = load(airflow_env, {f"AIRFLOW__CD2__{option.upper()}": value})
    assert loaded["dags"] == []
    [error] = loaded["errors"].values()
    assert f"[cd2] {option} = {value!r}" in error, error


def test_each_configured_instance_is_its_own_dag(airflow_env):
    loaded = load(
        airflow_env, {"AIRFLOW__CD2__INSTANCES": "default,ce", "AIRFLOW__CD2_CE__SCHEDULE": "@daily"}
    )
    assert loaded["errors"] == {}
    assert loaded["dags"] == ["cd2_replica", "cd2_replica_ce"]
    assert loaded["facts"]["schedule"] == "0 */4 * * *"  # the default instance keeps [cd2]'s


@pytest.mark.parametrize(
    "env, said",
    [
        ({"AIRFLOW__CD2__INSTANCES": "default,c-e"}, "[cd2] instances = 'default,c-e': instance name 'c-e'"),
        (
            {"AIRFLOW__CD2__INSTANCES": "default,ce", "AIRFLOW__CD2_CE__MAX_ACTIVE_TABLES": "0"},
            "[cd2_ce] max_active_tables = '0'",
        ),
    ],
)
def test_a_bad_instance_list_or_instance_option_fails_the_import_naming_it(airflow_env, env, said):
    loaded = load(airflow_env, env)
    assert loaded["dags"] == []
    [error] = loaded["errors"].values()
    assert said in error, error
