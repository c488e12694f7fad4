"""Several Canvas instances: the list the deploy takes, the main template it builds, the secrets it writes.

The deploy itself with several instances runs against moto in test_deploy.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mwaa_infra import deploy, template
from mwaa_infra.instances import DEFAULT_INSTANCES, Instance, instances_spec, parse_instances
from tests.mwaa_infra.cfn_template import TEMPLATES_DIR, resolve, resources_of_type
from tests.mwaa_infra.test_secrets_backend import DB_HOST, GENERATED_PASSWORD, TOPIC_ARN, run_reader, store
from tests.support.paths import TOOLS_BIN

MAIN_TEXT = (TEMPLATES_DIR / "cd2.yaml").read_text()
TWO = parse_instances("default,ce")


def test_no_list_or_default_alone_is_the_single_instance_of_today() -> None:
    for text in ("", " ", "default", "default=cd2"):
        assert parse_instances(text) == DEFAULT_INSTANCES
    (default,) = DEFAULT_INSTANCES
    names = (default.dag_id, default.dap_connection, default.postgres_connection, default.variable)
    assert names == ("cd2_replica", "dap_default", "cd2_postgres", "cd2_config")
    assert default.database == "cd2"


def test_instance_names_and_databases() -> None:
    assert parse_instances("default, ce ,West_2=replica_w") == (
        Instance("default", "cd2"),
        Instance("ce", "cd2_ce"),
        Instance("West_2", "replica_w"),
    )
    ce = TWO[1]
    names = (ce.dag_id, ce.dap_connection, ce.postgres_connection, ce.variable)
    assert names == ("cd2_replica_ce", "dap_ce", "cd2_postgres_ce", "cd2_config_ce")
    assert parse_instances(instances_spec(TWO)) == TWO
    assert Instance("ce_east_2", "x").logical_id_suffix == "CeEast2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default,c-e", "instance name 'c-e'"),
        ("default,ce.2", "instance name 'ce.2'"),
        ("=cd2_x", "instance name ''"),
        ("x" * 64, "instance name 'xxx"),
        ("ce,ce", "instance ce is listed twice"),
        ("ce,de=cd2_ce", "instances ce and de both write database cd2_ce"),
        ("default=cd2_other", "instance default writes database cd2"),
        ("ce=Cd2_Ce", "instance ce: database 'Cd2_Ce'"),
        ("ce_a,Ce_a=cd2_x", "instances ce_a and Ce_a differ only in case"),
    ],
)
def test_a_bad_list_is_refused_naming_the_fault(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")):
        parse_instances(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "--vpc-id", "vpc-1", "--subnet-ids", "subnet-1,subnet-2", "--instances", "default,c-e"],
        ["set-dap-credentials", "--instance", "c-e"],
    ],
)
def test_the_command_line_refuses_a_bad_instance_name_naming_it(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        deploy.main(argv)
    assert exit_.value.code == 2
    assert "instance name 'c-e': only letters, digits and underscore" in capsys.readouterr().err


def test_the_single_instance_template_is_cd2_yaml_as_it_is() -> None:
    assert template.main_template_body(MAIN_TEXT, DEFAULT_INSTANCES) is MAIN_TEXT


@pytest.fixture(scope="module")
def two_instance_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generated") / "cd2.yaml"
    path.write_text(template.main_template_body(MAIN_TEXT, TWO))
    return path


def test_another_instance_gets_its_own_secrets_alarm_and_the_configuration_option(
    two_instance_template: Path,
) -> None:
    generated = template.load_template(two_instance_template.read_text())
    original = template.load_template(MAIN_TEXT)
    added = set(generated["Resources"]) - set(original["Resources"])
    assert added == {f"{logical_id}Ce" for logical_id in template.PER_INSTANCE}
    for logical_id, resource in original["Resources"].items():  # the default instance's: as they were
        assert generated["Resources"][logical_id] == resource or logical_id == "Environment"
    names = {
        r["Properties"]["Name"] for r in resources_of_type(generated, "AWS::SecretsManager::Secret").values()
    }
    assert names == {
        "airflow/connections/dap_default",
        "airflow/connections/cd2_postgres",
        "airflow/variables/cd2_config",
        "airflow/connections/dap_ce",
        "airflow/connections/cd2_postgres_ce",
        "airflow/variables/cd2_config_ce",
    }
    alarm = generated["Resources"]["FailedRunsAlarmCe"]["Properties"]
    assert {"Name": "DAG", "Value": "cd2_replica_ce"} in alarm["Dimensions"]
    assert alarm["AlarmName"] == {"Fn::Sub": "${EnvironmentName}-cd2_replica_ce-failed-runs"}
    options = generated["Resources"]["Environment"]["Properties"]["AirflowConfigurationOptions"]["Fn::If"]
    original_options = original["Resources"]["Environment"]["Properties"]["AirflowConfigurationOptions"]
    for branch, original_branch in zip(options[1:], original_options["Fn::If"][1:], strict=True):
        assert branch == original_branch | {"cd2.instances": "default,ce"}
    assert generated["Outputs"]["Instances"]["Value"] == "default=cd2,ce=cd2_ce"
    assert generated["Parameters"] == original["Parameters"]


def test_the_generated_template_is_clean_under_cfn_lint_and_checkov(two_instance_template: Path) -> None:
    lint = subprocess.run(
        [str(TOOLS_BIN / "cfn-lint"), str(two_instance_template)], capture_output=True, text=True, timeout=300
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    checkov = subprocess.run(
        [str(TOOLS_BIN / "checkov"), "-f", str(two_instance_template), "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(checkov.stdout)
    assert report["results"]["failed_checks"] == [] and checkov.returncode == 0
    checked = {check["resource"] for check in report["results"]["passed_checks"]}
    assert "AWS::SecretsManager::Secret.PostgresConnectionSecretCe" in checked


def test_a_template_too_large_to_send_inline_is_refused() -> None:
    many = parse_instances(",".join(f"instance_{n}" for n in range(40)))
    with pytest.raises(ValueError, match="over the 51200 CloudFormation takes inline"):
        template.main_template_body(MAIN_TEXT, many)


# Runs in the child: each instance's connections and Variable, the way the DAG of that instance reads them.
READER = """
import importlib, json, sys
from cd2.config import parse_config
from cd2.connection_string import postgres_connection_string

spec = json.load(sys.stdin)
module, name = spec["backend"].rsplit(".", 1)
backend = getattr(importlib.import_module(module), name)(**spec["kwargs"])
out = {}
for dap_id, postgres_id, variable in spec["names"]:
    dap, pg = backend.get_connection(dap_id), backend.get_connection(postgres_id)
    config = parse_config(backend.get_variable(variable))
    out[dap_id] = {"host": dap.host, "login": dap.login, "password": dap.password}
    out[postgres_id] = postgres_connection_string(host=pg.host, port=pg.port, login=pg.login,
        password=pg.password, database=pg.schema, extra=pg.extra_dejson)
    out[variable] = {"namespaces": list(config.namespaces), "sns_topic_arn": config.sns_topic_arn}
print(json.dumps(out))
"""


def test_each_instance_reads_its_own_connections_and_variable_through_airflow(
    aws: str, two_instance_template: Path, tmp_path: Path
) -> None:
    generated = template.load_template(two_instance_template.read_text())
    postgres_arn = (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:airflow/connections/cd2_postgres-AbCdEf"
    )
    values = {
        "Namespaces": ["canvas"],
        "Topic": TOPIC_ARN,
        "DbCluster.Endpoint.Address": DB_HOST,
        "PostgresConnectionSecret": postgres_arn,
    }
    secrets = {}
    for resource in resources_of_type(generated, "AWS::SecretsManager::Secret").values():
        properties = resource["Properties"]
        if "GenerateSecretString" in properties:  # the default instance's, tested in test_secrets_backend
            continue
        value = resolve(properties["SecretString"], values)
        # What CloudFormation puts in place of the dynamic reference: the role's password.
        secrets[properties["Name"]] = value.replace(
            "{{resolve:secretsmanager:" + postgres_arn + ":SecretString:password}}", GENERATED_PASSWORD
        )
    secrets["airflow/connections/dap_ce"] = deploy.dap_connection_secret(
        "https://api-gateway.instructure.com", "client-of-ce", "secret-of-ce"
    )
    store(aws, secrets)
    options = generated["Resources"]["Environment"]["Properties"]["AirflowConfigurationOptions"]["Fn::If"][2]
    spec = {"names": [("dap_ce", "cd2_postgres_ce", "cd2_config_ce")]}
    read = run_reader(READER, options, spec, aws, tmp_path)
    assert read["dap_ce"] == {
        "host": "https://api-gateway.instructure.com",
        "login": "client-of-ce",
        "password": "secret-of-ce",
    }
    assert (
        read["cd2_postgres_ce"]
        == f"postgresql://cd2_app:{GENERATED_PASSWORD}@{DB_HOST}:5432/cd2_ce?ssl=require"
    )
    assert read["cd2_config_ce"] == {"namespaces": ["canvas"], "sns_topic_arn": TOPIC_ARN}


@pytest.mark.parametrize("spec", ["default", "default,ce", "east,West_2=replica_w"])
def test_the_deploy_names_every_instance_as_the_dag_reads_it(spec: str) -> None:
    """The deploy (which runs without the plugins on its path) and cd2.instances name each instance's DAG,
    connections and Variable alike, and list the instances in one order (the first keeps the API budget)."""
    from cd2.instances import instances_from

    deployed = parse_instances(spec)
    read = instances_from(",".join(instance.name for instance in deployed))
    assert [(i.dag_id, i.dap_connection, i.postgres_connection, i.variable) for i in deployed] == [
        (i.dag_id, i.dap_conn_id, i.postgres_conn_id, i.config_variable) for i in read
    ]
