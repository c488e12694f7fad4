"""The Canvas instances of a deployment: names from [cd2] instances, per-instance options, shared targets."""

from __future__ import annotations

import pytest

from cd2.instances import configured_instances, instance_of_dag, instances_from, shared_databases
from cd2.settings import DEFAULT_MAX_ACTIVE_TABLES, DEFAULT_SCHEDULE, OPTIONS, DagSettings, SettingsError


@pytest.fixture(autouse=True)
def no_cd2_options(monkeypatch):
    for option in (*OPTIONS, "instances"):
        monkeypatch.delenv(f"AIRFLOW__CD2__{option.upper()}", raising=False)
    for section in ("CE", "EAST"):
        for option in (*OPTIONS, "schedul"):
            monkeypatch.delenv(f"AIRFLOW__CD2_{section}__{option.upper()}", raising=False)


def names_of(instance) -> tuple[str, ...]:
    return (
        instance.dag_id,
        instance.dap_conn_id,
        instance.postgres_conn_id,
        instance.config_variable,
        instance.section,
        instance.tables_alias,
    )


@pytest.mark.parametrize("text", ["", " ", ",", "default", " default , "])
def test_no_list_or_default_keeps_the_single_instance_names(text):
    [instance] = instances_from(text)
    assert names_of(instance) == (
        "cd2_replica",
        "dap_default",
        "cd2_postgres",
        "cd2_config",
        "cd2",
        "cd2_replica_tables",
    )
    assert instance.budget_conn_id == "cd2_postgres"


def test_an_instance_takes_its_name_in_every_name_and_the_first_keeps_the_budget():
    default, ce = instances_from("default, ce")
    assert names_of(ce) == (
        "cd2_replica_ce",
        "dap_ce",
        "cd2_postgres_ce",
        "cd2_config_ce",
        "cd2_ce",
        "cd2_replica_ce_tables",
    )
    assert default.budget_conn_id == ce.budget_conn_id == "cd2_postgres"
    east, west = instances_from("east,west")
    assert east.budget_conn_id == west.budget_conn_id == "cd2_postgres_east"


def test_every_name_of_every_instance_is_its_own():
    instances = instances_from("default,ce,east,West_2")
    for position in range(6):
        names = [names_of(instance)[position] for instance in instances]
        assert len(set(names)) == len(names), names


@pytest.mark.parametrize(
    "text, says",
    [
        ("default,c-e", "instance name 'c-e' may hold only letters, digits and underscores"),
        ("ce east", "instance name 'ce east' may hold"),
        ("ce,cé", "instance name 'cé' may hold"),
        ("ce,CE", "names instance 'CE' twice (as 'ce'"),
        ("default,default", "names instance 'default' twice"),
    ],
)
def test_a_bad_instance_list_is_refused_naming_the_name(text, says):
    with pytest.raises(SettingsError) as refused:
        instances_from(text)
    assert f"[cd2] instances = {text!r}" in str(refused.value)
    assert says in str(refused.value)


def test_an_instance_section_overrides_cd2_option_by_option(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CD2__INSTANCES", "default,ce")
    monkeypatch.setenv("AIRFLOW__CD2__MAX_ACTIVE_TABLES", "3")
    monkeypatch.setenv("AIRFLOW__CD2_CE__SCHEDULE", "@daily")
    default, ce = configured_instances()
    assert default.settings == DagSettings(schedule=DEFAULT_SCHEDULE, max_active_tables=3)
    assert ce.settings == DagSettings(schedule="@daily", max_active_tables=3)
    assert instance_of_dag("cd2_replica_ce") == ce
    assert instance_of_dag("cd2_replica_east") is None
    assert DagSettings().max_active_tables == DEFAULT_MAX_ACTIVE_TABLES


@pytest.mark.parametrize(
    "option, value, said",
    [
        ("CD2_CE__MAX_ACTIVE_TABLES", "0", r"\[cd2_ce\] max_active_tables = '0' must be"),
        ("CD2__LOCK_WAIT_SECONDS", "-1", r"\[cd2\] lock_wait_seconds = '-1'"),  # inherited: named where set
        ("CD2_CE__SCHEDUL", "@daily", r"\[cd2_ce\] has unknown option\(s\) \['schedul'\]"),
    ],
)
def test_a_bad_instance_option_is_refused_naming_where_it_is_set(monkeypatch, option, value, said):
    monkeypatch.setenv("AIRFLOW__CD2__INSTANCES", "ce")
    monkeypatch.setenv(f"AIRFLOW__{option}", value)
    [ce] = configured_instances()
    with pytest.raises(SettingsError, match=said):
        _ = ce.settings


def test_two_instances_on_one_database_are_named_with_the_database():
    targets = {
        "default": ("db.example.edu", 5432, "cd2"),
        "ce": ("DB.example.edu", 5432, "cd2"),
        "east": ("db.example.edu", 5432, "cd2_east"),
        "west": ("db.example.edu", 6432, "cd2_east"),
    }
    [problem] = shared_databases(targets)
    assert "instances 'default' and 'ce' both write database 'cd2' on DB.example.edu:5432" in problem
    assert shared_databases(targets, "ce") == [problem]
    assert shared_databases(targets, "east") == []
    assert shared_databases({"a": ("h", 5432, "d")}) == []
