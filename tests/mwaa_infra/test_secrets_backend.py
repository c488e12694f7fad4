"""The secrets the templates (and set-dap-credentials) write, read back by Airflow's SecretsManagerBackend.

The secret values are rendered from cd2.yaml itself, stored in moto's Secrets Manager, and read in a
child process (its own AIRFLOW_HOME) by the backend class and kwargs the template configures for MWAA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3

from mwaa_infra import deploy
from tests.mwaa_infra.cfn_template import TEMPLATES_DIR, load_template, resolve, resources_of_type
from tests.support.moto_server import aws_test_environment
from tests.support.paths import REPO_ROOT

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:cd2-replica-notifications"
DB_HOST = "cd2.cluster-abc.us-east-1.rds.amazonaws.com"
GENERATED_PASSWORD = "Generated0Password0Without0Punctuation1"

# Runs in the child: reads what the DAG reads, the way Airflow reads it on MWAA.
READER = """
import importlib, json, sys
from cd2.config import parse_config
from cd2.connection_string import postgres_connection_string

spec = json.load(sys.stdin)
module, name = spec["backend"].rsplit(".", 1)
backend = getattr(importlib.import_module(module), name)(**spec["kwargs"])
out = {}
for conn_id in ("dap_default", "cd2_postgres", "aws_default"):
    conn = backend.get_connection(conn_id)
    out[conn_id] = None if conn is None else {"conn_type": conn.conn_type, "host": conn.host, "login": conn.login,
                    "password": conn.password, "schema": conn.schema, "port": conn.port, "extra": conn.extra_dejson}
pg = out["cd2_postgres"]
out["dap_connection_string"] = postgres_connection_string(host=pg["host"], port=pg["port"], login=pg["login"],
    password=pg["password"], database=pg["schema"], extra=pg["extra"])
config = parse_config(backend.get_variable("cd2_config"))
out["cd2_config"] = {"namespaces": list(config.namespaces), "sns_topic_arn": config.sns_topic_arn,
                     "include": list(config.include)}
print(json.dumps(out))
"""


def template_secrets(namespaces: list[str], max_active_tables: int) -> dict[str, str]:
    """``{secret name: SecretString}`` as CloudFormation would create them from cd2.yaml."""
    template = load_template(TEMPLATES_DIR / "cd2.yaml")
    values = {
        "Namespaces": namespaces,
        "MaxActiveTables": max_active_tables,
        "Topic": TOPIC_ARN,
        "DbCluster.Endpoint.Address": DB_HOST,
    }
    rendered = {}
    for resource in resources_of_type(template, "AWS::SecretsManager::Secret").values():
        properties = resource["Properties"]
        if "SecretString" in properties:
            rendered[properties["Name"]] = resolve(properties["SecretString"], values)
        else:  # Secrets Manager adds the generated string under GenerateStringKey
            generate = properties["GenerateSecretString"]
            secret = json.loads(resolve(generate["SecretStringTemplate"], values))
            secret[generate["GenerateStringKey"]] = GENERATED_PASSWORD
            rendered[properties["Name"]] = json.dumps(secret)
    return rendered


def read_with_airflow(endpoint: str, tmp_path: Path) -> dict:
    options = load_template(TEMPLATES_DIR / "cd2.yaml")["Resources"]["Environment"]["Properties"]
    mwaa_config = options["AirflowConfigurationOptions"]["Fn::If"][2]  # the branch without a schedule
    return run_reader(READER, mwaa_config, {}, endpoint, tmp_path)


def run_reader(reader: str, mwaa_config: dict, spec: dict, endpoint: str, tmp_path: Path) -> dict:
    """What ``reader`` prints, run in Airflow with the secrets backend MWAA's configuration names."""
    spec = {
        "backend": mwaa_config["secrets.backend"],
        "kwargs": json.loads(mwaa_config["secrets.backend_kwargs"]),
    } | spec
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "AWS_"))}
    env |= aws_test_environment(endpoint)
    env |= {"AIRFLOW_HOME": str(tmp_path / "airflow"), "PYTHONPATH": str(REPO_ROOT / "plugins")}
    result = subprocess.run(
        [sys.executable, "-c", reader],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def store(endpoint: str, secrets: dict[str, str]) -> None:
    client = boto3.client("secretsmanager", endpoint_url=endpoint)
    for name, value in secrets.items():
        client.create_secret(Name=name, SecretString=value)


def test_template_secrets_read_back_as_the_connections_and_variable_the_dag_expects(aws: str, tmp_path: Path):
    secrets = template_secrets(["canvas", "catalog"], 6)
    assert sorted(secrets) == [
        "airflow/connections/cd2_postgres",
        "airflow/connections/dap_default",
        "airflow/variables/cd2_config",
    ]
    # What `deploy.py set-dap-credentials` puts in place of the template's credential-less value.
    secrets["airflow/connections/dap_default"] = deploy.dap_connection_secret(
        "https://api-gateway.instructure.com", "client-id-1", "client/secret+with=odd&chars"
    )
    # Never to be read from Secrets Manager: aws_default is MWAA's execution role.
    secrets["airflow/connections/aws_default"] = json.dumps({"conn_type": "aws", "login": "AKIAEVIL"})
    store(aws, secrets)

    read = read_with_airflow(aws, tmp_path)

    assert read["dap_default"]["host"] == "https://api-gateway.instructure.com"
    assert read["dap_default"]["login"] == "client-id-1"
    assert read["dap_default"]["password"] == "client/secret+with=odd&chars"
    assert read["cd2_postgres"] == {
        "conn_type": "postgres",
        "host": DB_HOST,
        "login": "cd2_app",
        "password": GENERATED_PASSWORD,
        "schema": "cd2",
        "port": 5432,
        "extra": {"sslmode": "require"},
    }
    assert read["dap_connection_string"] == (
        f"postgresql://cd2_app:{GENERATED_PASSWORD}@{DB_HOST}:5432/cd2?ssl=require"
    )
    assert read["aws_default"] is None
    assert read["cd2_config"] == {
        "namespaces": ["canvas", "catalog"],
        "sns_topic_arn": TOPIC_ARN,
        "include": [],
    }


def test_the_credential_less_dap_secret_reads_as_a_connection_with_only_the_host(aws: str, tmp_path: Path):
    """Before set-dap-credentials: the connection exists, and the DAP hook can say what is missing."""
    store(aws, template_secrets(["canvas"], 4))
    read = read_with_airflow(aws, tmp_path)
    assert read["dap_default"]["host"] == "https://api-gateway.instructure.com"
    assert read["dap_default"]["login"] is None and read["dap_default"]["password"] is None
