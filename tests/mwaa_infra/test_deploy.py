"""The deploy command against a moto server: versions uploaded, versions deployed, nothing redone, dry runs.

moto's CloudFormation cannot create an MWAA environment or a Serverless v2 cluster, so the main stack
deployed here is the real cd2.yaml's parameter section with one SNS topic as its only resource: what is
checked is what the deploy command sends, and moto records the parameters a stack was given. The tests of
several Canvas instances add the resources the deploy copies per instance, which moto skips (it has no
such resource types) while keeping the template the deploy sent.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import boto3
import pytest
import yaml

from mwaa_infra import deploy, template
from tests.mwaa_infra.cfn_template import TEMPLATES_DIR, load_template, resources_of_type

PREFIX = "cd2"


@pytest.fixture
def moto_templates(tmp_path: Path) -> Path:
    """storage.yaml as it is; cd2.yaml reduced to its parameters and a resource moto can create."""
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copy(TEMPLATES_DIR / "storage.yaml", folder / "storage.yaml")
    parameters = load_template(TEMPLATES_DIR / "cd2.yaml")["Parameters"]
    # moto reports a list parameter's value as a Python list repr ("['a', 'b']"), not "a,b" as AWS does.
    for parameter in parameters.values():
        if "List" in parameter["Type"]:
            parameter["Type"] = "String"
            parameter.pop("AllowedValues", None)
    reduced = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": parameters,
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "cd2-notifications"}}},
        "Outputs": {
            "WebserverUrl": {"Value": {"Fn::Sub": "${EnvironmentName}.airflow.example.test"}},
            "TopicArn": {"Value": {"Ref": "Topic"}},
        },
    }
    (folder / "cd2.yaml").write_text(yaml.safe_dump(reduced, sort_keys=False))
    return folder


@pytest.fixture
def storage_stack(aws: str, moto_templates: Path) -> str:
    """The storage stack, created by the deploy code; returns the bucket name.

    moto's CloudFormation ignores a bucket's VersioningConfiguration, so it is switched on here as the
    real template does (test_templates checks the template says so).
    """
    settings = deploy.Settings(prefix=PREFIX, region="us-east-1", endpoint_url=aws, poll_seconds=1)
    deployer = deploy.Deployer(settings, say=lambda line: None)
    bucket = deployer.deploy_stack(f"{PREFIX}-storage", moto_templates / "storage.yaml", {})["BucketName"]
    boto3.client("s3", endpoint_url=aws).put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    return bucket


@pytest.fixture
def dist(built_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle that a test may change."""
    return Path(shutil.copytree(built_bundle, tmp_path / "dist"))


@pytest.fixture
def network(aws: str) -> tuple[str, str]:
    """An existing VPC with two subnets in different zones: (VpcId, "subnet-a,subnet-b")."""
    ec2 = boto3.client("ec2", endpoint_url=aws)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{zone}")[
            "Subnet"
        ]["SubnetId"]
        for i, zone in enumerate("ab", start=1)
    ]
    return vpc, ",".join(subnets)


def run_deploy(
    endpoint: str, dist: Path, templates: Path, network: tuple[str, str], *extra: str, prepare: bool = False
) -> None:
    vpc, subnets = network
    argv = ["deploy", "--prefix", PREFIX, "--region", "us-east-1", "--endpoint-url", endpoint]
    argv += ["--skip-bundle", "--dist", str(dist), "--templates-dir", str(templates), "--poll-seconds", "1"]
    argv += ["--vpc-id", vpc, "--subnet-ids", subnets, *extra]
    argv += [] if prepare else ["--skip-database-preparation"]
    assert deploy.main(argv) == 0


def object_versions(endpoint: str) -> dict[str, list[str]]:
    """``{key: [version ids, newest first]}`` of the bundle bucket, delete markers as "deleted"."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    (bucket,) = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    listing = s3.list_object_versions(Bucket=bucket)
    versions: dict[str, list[str]] = {}
    for item in listing.get("Versions", []):  # S3 lists each key's versions newest first
        versions.setdefault(item["Key"], []).append(item["VersionId"])
    for marker in listing.get("DeleteMarkers", []):
        if marker["IsLatest"]:
            versions.setdefault(marker["Key"], []).insert(0, "deleted")
    return versions


def main_stack(endpoint: str) -> dict:
    return boto3.client("cloudformation", endpoint_url=endpoint).describe_stacks(StackName=PREFIX)["Stacks"][
        0
    ]


def stack_parameters(endpoint: str) -> dict[str, str]:
    return {p["ParameterKey"]: p["ParameterValue"] for p in main_stack(endpoint)["Parameters"]}


def test_first_deploy_uploads_every_file_with_a_version_and_deploys_those_versions(
    aws: str, storage_stack: str, dist: Path, moto_templates: Path, network, capsys
) -> None:
    run_deploy(aws, dist, moto_templates, network)
    versions = object_versions(aws)
    assert set(versions) == {p.as_posix() for p in deploy.bundle.bundle_files(dist)}
    assert all(len(v) == 1 and v[0] not in ("null", None) for v in versions.values()), versions
    parameters = stack_parameters(aws)
    assert parameters["PluginsVersion"] == versions["plugins.zip"][0]
    assert parameters["RequirementsVersion"] == versions["requirements.txt"][0]
    assert parameters["StartupScriptVersion"] == versions["startup.sh"][0]
    assert parameters["VpcId"] == network[0] and parameters["PrivateSubnetIds"] == network[1]
    assert parameters["BucketName"].startswith("airflow-cd2-storage-")
    assert "Airflow UI: https://cd2-replica.airflow.example.test" in capsys.readouterr().out


def test_uploaded_objects_carry_their_sha256_and_the_bundle_bytes(
    aws: str, storage_stack: str, dist: Path, moto_templates, network
):
    run_deploy(aws, dist, moto_templates, network)
    s3 = boto3.client("s3", endpoint_url=aws)
    bucket = stack_parameters(aws)["BucketName"]
    head = s3.head_object(Bucket=bucket, Key="plugins.zip")
    assert head["Metadata"]["sha256"] == deploy.bundle.sha256_of(dist / "plugins.zip")
    body = s3.get_object(Bucket=bucket, Key="dags/cd2_replica.py")["Body"].read()
    assert body == (dist / "dags" / "cd2_replica.py").read_bytes()


def test_second_deploy_with_no_change_uploads_nothing_and_updates_no_stack(
    aws: str, storage_stack: str, dist: Path, moto_templates: Path, network, capsys
) -> None:
    run_deploy(aws, dist, moto_templates, network)
    versions, parameters = object_versions(aws), stack_parameters(aws)
    capsys.readouterr()
    run_deploy(aws, dist, moto_templates, network)
    output = capsys.readouterr().out
    assert object_versions(aws) == versions
    assert stack_parameters(aws) == parameters
    assert "LastUpdatedTime" not in main_stack(aws)
    assert "uploaded" not in output and "creating" not in output and "updating" not in output
    assert output.count("template and parameters unchanged") == 2  # storage and main stacks


def test_a_changed_file_gets_a_new_version_and_only_its_parameter_moves(
    aws: str, storage_stack: str, dist: Path, moto_templates: Path, network
) -> None:
    run_deploy(aws, dist, moto_templates, network)
    before, parameters_before = object_versions(aws), stack_parameters(aws)
    with (dist / "startup.sh").open("a") as script:
        script.write("# changed\n")
    run_deploy(aws, dist, moto_templates, network)
    after, parameters_after = object_versions(aws), stack_parameters(aws)
    assert [key for key in after if after[key] != before[key]] == ["startup.sh"]
    assert len(after["startup.sh"]) == 2
    assert parameters_after["StartupScriptVersion"] == after["startup.sh"][0] != before["startup.sh"][0]
    assert {k: v for k, v in parameters_after.items() if k != "StartupScriptVersion"} == {
        k: v for k, v in parameters_before.items() if k != "StartupScriptVersion"
    }


def test_a_dag_file_no_longer_bundled_is_deleted_from_the_dags_folder(
    aws: str, storage_stack: str, dist: Path, moto_templates: Path, network
) -> None:
    (dist / "dags" / "old_dag.py").write_text("# from airflow import DAG\n")
    run_deploy(aws, dist, moto_templates, network)
    (dist / "dags" / "old_dag.py").unlink()
    run_deploy(aws, dist, moto_templates, network)
    versions = object_versions(aws)
    assert versions["dags/old_dag.py"][0] == "deleted"
    assert len(versions["dags/cd2_replica.py"]) == 1


def test_deploy_refuses_a_bucket_without_versioning(
    aws: str, dist: Path, moto_templates: Path, network
) -> None:
    with pytest.raises(RuntimeError, match="versioning off; MWAA needs it Enabled"):
        run_deploy(aws, dist, moto_templates, network)
    assert "Contents" not in boto3.client("s3", endpoint_url=aws).list_objects_v2(
        Bucket=boto3.client("s3", endpoint_url=aws).list_buckets()["Buckets"][0]["Name"]
    )


def test_main_stack_parameters_can_be_given(
    aws: str, storage_stack: str, dist: Path, moto_templates: Path, network
) -> None:
    run_deploy(aws, dist, moto_templates, network, "--parameter", "EnvironmentClass=mw1.medium")
    assert stack_parameters(aws)["EnvironmentClass"] == "mw1.medium"


def test_set_dap_credentials_reads_them_from_the_environment(aws: str, monkeypatch, capsys) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=aws)
    secrets.create_secret(Name="airflow/connections/dap_default", SecretString="{}")
    monkeypatch.setenv("DAP_CLIENT_ID", "client-id-1")
    monkeypatch.setenv("DAP_CLIENT_SECRET", "s3cret-value")
    argv = ["set-dap-credentials", "--region", "us-east-1", "--endpoint-url", aws]
    assert deploy.main(argv) == 0
    stored = secrets.get_secret_value(SecretId="airflow/connections/dap_default")["SecretString"]
    assert stored == deploy.dap_connection_secret(
        "https://api-gateway.instructure.com", "client-id-1", "s3cret-value"
    )
    assert "s3cret-value" not in capsys.readouterr().out


@pytest.fixture
def dead_endpoint():
    """A loopback port that accepts TCP connections and never answers; yields (url, connections made)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)

        def connections() -> int:
            count = 0
            while True:
                try:
                    listener.accept()[0].close()
                    count += 1
                except BlockingIOError:
                    return count

        yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "--create-network"],
        ["deploy", "--vpc-id", "vpc-1", "--subnet-ids", "subnet-1,subnet-2", "--skip-bundle"],
        ["prepare-database"],
        ["set-dap-credentials"],
    ],
)
def test_dry_run_calls_nothing(
    argv: list[str], dead_endpoint, built_bundle: Path, monkeypatch, capsys
) -> None:
    url, connections = dead_endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("DAP_CLIENT_SECRET", raising=False)
    extra = ["--dist", str(built_bundle)] if argv[0] == "deploy" else []
    assert deploy.main([*argv, "--dry-run", "--region", "us-east-1", "--endpoint-url", url, *extra]) == 0
    output = capsys.readouterr().out
    assert connections() == 0
    assert output.startswith("dry run: nothing below is done")
    assert "would" in output


def test_dry_run_deploy_lists_every_action(dead_endpoint, built_bundle: Path, capsys) -> None:
    url, connections = dead_endpoint
    argv = ["deploy", "--dry-run", "--create-network", "--nat-gateways", "2", "--endpoint-url", url]
    assert deploy.main([*argv, "--region", "us-east-1", "--dist", str(built_bundle)]) == 0
    output = capsys.readouterr().out
    assert connections() == 0
    assert "would build the bundle" in output
    for stack in ("cd2-storage", "cd2-network", "cd2 "):
        assert f"would create or update stack {stack}" in output
    assert "NatGatewayCount=2" in output
    for relative in deploy.bundle.bundle_files(built_bundle):
        assert f"/{relative.as_posix()} unless its sha256" in output
    assert "ALTER ROLE cd2_app WITH LOGIN PASSWORD '<SCRAM verifier>'" in output
    assert "SCRAM-SHA-256$" not in output


# Several Canvas instances ---------------------------------------------------------------------------------

CLUSTER_ARN = "arn:aws:rds:us-east-1:123456789012:cluster:cd2-db"
MASTER_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!cluster-1-AbCdEf"
ROLE_PASSWORD = "Generated0Password0Of0The0Role"


@pytest.fixture
def instance_templates(moto_templates: Path) -> Path:
    """moto_templates' cd2.yaml with what the deploy copies for other instances, and the outputs it reads.

    moto's CloudFormation skips the secrets, the alarm and the MWAA environment (it has none of them): the
    stack records the template the deploy sent, and a test creates the secrets CloudFormation would.
    """
    real = load_template(TEMPLATES_DIR / "cd2.yaml")
    main = yaml.safe_load((moto_templates / "cd2.yaml").read_text())
    main["Mappings"], main["Conditions"] = real["Mappings"], real["Conditions"]
    for logical_id in ("Environment", *template.PER_INSTANCE):
        main["Resources"][logical_id] = real["Resources"][logical_id]
    main["Outputs"] |= {
        "DbClusterArn": {"Value": CLUSTER_ARN},
        "DbMasterSecretArn": {"Value": MASTER_SECRET_ARN},
        "PostgresConnectionSecretArn": {"Value": "airflow/connections/cd2_postgres"},
    }
    (moto_templates / "cd2.yaml").write_text(yaml.safe_dump(main, sort_keys=False))
    return moto_templates


def sent_template(endpoint: str) -> str:
    cloudformation = boto3.client("cloudformation", endpoint_url=endpoint)
    return cloudformation.get_template(StackName=PREFIX, TemplateStage="Original")["TemplateBody"]


def stack_outputs(endpoint: str) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in main_stack(endpoint).get("Outputs", [])}


def postgres_connection(database: str, password: str) -> str:
    return json.dumps(
        {"conn_type": "postgres", "host": "db.example.test", "port": 5432, "schema": database}
        | {"login": "cd2_app", "password": password, "extra": {"sslmode": "require"}}
    )


def test_a_second_instance_gets_its_secrets_its_database_and_the_configuration_option(
    aws: str, storage_stack: str, dist: Path, instance_templates: Path, network, capsys
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=aws)
    # What CloudFormation creates and moto's does not: the role's connection, the new instance's ones
    # (its password from before the role's last change, to be aligned by the preparation).
    secrets.create_secret(
        Name="airflow/connections/cd2_postgres", SecretString=postgres_connection("cd2", ROLE_PASSWORD)
    )
    secrets.create_secret(
        Name="airflow/connections/cd2_postgres_ce", SecretString=postgres_connection("cd2_ce", "old")
    )
    secrets.create_secret(Name="airflow/connections/dap_ce", SecretString='{"conn_type": "http"}')

    run_deploy(aws, dist, instance_templates, network, "--instances", "default,ce", prepare=True)

    sent = template.load_template(sent_template(aws))
    names = {r["Properties"]["Name"] for r in resources_of_type(sent, "AWS::SecretsManager::Secret").values()}
    assert {
        "airflow/connections/dap_ce",
        "airflow/connections/cd2_postgres_ce",
        "airflow/variables/cd2_config_ce",
    } < names
    options = sent["Resources"]["Environment"]["Properties"]["AirflowConfigurationOptions"]["Fn::If"][1:]
    assert [branch["cd2.instances"] for branch in options] == ["default,ce", "default,ce"]
    assert stack_outputs(aws)["Instances"] == "default=cd2,ce=cd2_ce"
    output = capsys.readouterr().out
    assert "Canvas instances: default=cd2,ce=cd2_ce\n" in output
    for statement in (
        "CREATE DATABASE cd2_ce",
        *(f"GRANT CONNECT, CREATE ON DATABASE {d} TO cd2_app" for d in ("cd2", "cd2_ce")),
    ):
        assert f"database: {statement}\n" in output
    aligned = json.loads(
        secrets.get_secret_value(SecretId="airflow/connections/cd2_postgres_ce")["SecretString"]
    )
    assert (aligned["schema"], aligned["login"], aligned["password"]) == ("cd2_ce", "cd2_app", ROLE_PASSWORD)
    assert ROLE_PASSWORD not in output

    # prepare-database alone prepares the instances the stack was deployed with.
    common = ["--prefix", PREFIX, "--region", "us-east-1", "--endpoint-url", aws]
    assert deploy.main(["prepare-database", *common]) == 0
    output = capsys.readouterr().out
    assert "database: GRANT CONNECT, CREATE ON DATABASE cd2_ce TO cd2_app\n" in output
    assert "secret airflow/connections/cd2_postgres_ce" not in output  # already aligned

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAP_CLIENT_ID", "client-of-ce")
        env.setenv("DAP_CLIENT_SECRET", "secret-of-ce")
        assert deploy.main(["set-dap-credentials", "--instance", "ce", *common]) == 0
    stored = secrets.get_secret_value(SecretId="airflow/connections/dap_ce")["SecretString"]
    assert stored == deploy.dap_connection_secret(deploy.DEFAULT_DAP_API_URL, "client-of-ce", "secret-of-ce")
    # An instance not deployed is refused before its credentials are asked for (stdin is not readable here).
    with pytest.raises(RuntimeError, match="dap_de does not exist: deploy with --instances listing de first"):
        deploy.main(["set-dap-credentials", "--instance", "de", *common])


def test_a_rerun_with_the_same_instances_changes_nothing_and_one_without_the_list_keeps_it(
    aws: str, storage_stack: str, dist: Path, instance_templates: Path, network, capsys
) -> None:
    run_deploy(aws, dist, instance_templates, network, "--instances", "default,ce")
    body, parameters = sent_template(aws), stack_parameters(aws)
    capsys.readouterr()
    run_deploy(aws, dist, instance_templates, network, "--instances", "default,ce")
    run_deploy(aws, dist, instance_templates, network)
    output = capsys.readouterr().out
    assert "Canvas instances: default=cd2,ce=cd2_ce (as last deployed; --instances changes them)" in output
    assert output.count("template and parameters unchanged") == 4  # storage and main stacks, twice
    assert "creating" not in output and "updating" not in output and "uploaded" not in output
    assert (sent_template(aws), stack_parameters(aws)) == (body, parameters)
    assert "LastUpdatedTime" not in main_stack(aws)


def test_the_default_instance_alone_deploys_cd2_yaml_as_it_is_before_and_after_a_second_instance(
    aws: str, storage_stack: str, dist: Path, instance_templates: Path, network
) -> None:
    as_it_is = (instance_templates / "cd2.yaml").read_text()
    run_deploy(aws, dist, instance_templates, network, "--instances", "default")
    assert sent_template(aws) == as_it_is and "Instances" not in stack_outputs(aws)
    parameters = stack_parameters(aws)
    run_deploy(aws, dist, instance_templates, network, "--instances", "default,ce")
    assert sent_template(aws) != as_it_is and stack_parameters(aws) == parameters
    run_deploy(aws, dist, instance_templates, network, "--instances", "default")
    assert sent_template(aws) == as_it_is and "Instances" not in stack_outputs(aws)
    assert stack_parameters(aws) == parameters


def test_dry_run_deploy_of_two_instances_lists_both_databases(
    dead_endpoint, built_bundle: Path, capsys
) -> None:
    url, connections = dead_endpoint
    argv = ["deploy", "--dry-run", "--create-network", "--instances", "default,ce", "--endpoint-url", url]
    assert deploy.main([*argv, "--region", "us-east-1", "--dist", str(built_bundle)]) == 0
    output = capsys.readouterr().out
    assert connections() == 0
    assert "Canvas instances: default=cd2,ce=cd2_ce\n" in output
    assert "    CREATE DATABASE cd2_ce\n" in output
    assert "    GRANT CONNECT, CREATE ON DATABASE cd2_ce TO cd2_app\n" in output
    assert "would give every other instance's connection the login and password of cd2_postgres" in output
