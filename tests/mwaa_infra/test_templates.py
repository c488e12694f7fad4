"""The CloudFormation templates: clean under cfn-lint and checkov, and saying what the issue asks."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.mwaa_infra.cfn_template import TEMPLATE_PATHS, TEMPLATES_DIR, load_template, resources_of_type
from tests.support.paths import TOOLS_BIN

MAIN = TEMPLATES_DIR / "cd2.yaml"


def test_the_three_templates_exist() -> None:
    assert [path.name for path in TEMPLATE_PATHS] == ["cd2.yaml", "network.yaml", "storage.yaml"]


def test_cfn_lint_reports_nothing() -> None:
    result = subprocess.run(
        [str(TOOLS_BIN / "cfn-lint"), *map(str, TEMPLATE_PATHS)], capture_output=True, text=True, timeout=300
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_checkov_fails_no_check(checkov_report: dict) -> None:
    failed = [
        (check["check_id"], check["resource"], check["file_path"])
        for report in checkov_report["reports"]
        for check in report["results"]["failed_checks"]
    ]
    passed = sum(len(report["results"]["passed_checks"]) for report in checkov_report["reports"])
    assert failed == []
    assert checkov_report["returncode"] == 0
    assert passed > 40, "checkov scanned (almost) nothing: is the template folder right?"


def test_every_checkov_skip_is_justified_in_template_metadata(checkov_report: dict) -> None:
    skipped = [check for report in checkov_report["reports"] for check in report["results"]["skipped_checks"]]
    assert skipped, "expected the documented skips to be reported as skipped"
    for check in skipped:
        comment = check["check_result"].get("suppress_comment") or ""
        assert len(comment) > 40, f"{check['check_id']} skipped without a reason"
    for path in TEMPLATE_PATHS:
        for name, resource in load_template(path)["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                assert skip["id"].startswith("CKV") and len(skip.get("comment", "")) > 40, (path.name, name)


@pytest.fixture(scope="module")
def main_template() -> dict:
    return load_template(MAIN)


def test_airflow_version_parameter(main_template: dict) -> None:
    parameter = main_template["Parameters"]["AirflowVersion"]
    assert parameter["Default"] == "3.3.1"
    assert sorted(parameter["AllowedValues"]) == ["3.2.1", "3.3.1"]


def test_environment_is_private_logs_everything_and_pins_object_versions(main_template: dict) -> None:
    environment = resources_of_type(main_template, "AWS::MWAA::Environment")["Environment"]["Properties"]
    assert main_template["Parameters"]["WebserverAccessMode"]["Default"] == "PRIVATE_ONLY"
    logging = environment["LoggingConfiguration"]
    assert sorted(logging) == [
        "DagProcessingLogs",
        "SchedulerLogs",
        "TaskLogs",
        "WebserverLogs",
        "WorkerLogs",
    ]
    assert all(log["Enabled"] is True for log in logging.values())
    assert environment["PluginsS3ObjectVersion"] == {"Ref": "PluginsVersion"}
    assert environment["RequirementsS3ObjectVersion"] == {"Ref": "RequirementsVersion"}
    assert environment["StartupScriptS3ObjectVersion"] == {"Ref": "StartupScriptVersion"}


def test_secrets_backend_reads_airflow_prefixes_but_never_aws_default(main_template: dict) -> None:
    options = main_template["Resources"]["Environment"]["Properties"]["AirflowConfigurationOptions"]["Fn::If"]
    for branch in options[1:]:
        assert branch["secrets.backend"].endswith("secrets_manager.SecretsManagerBackend")
        kwargs = json.loads(branch["secrets.backend_kwargs"])
        assert kwargs["connections_prefix"] == "airflow/connections"
        assert kwargs["variables_prefix"] == "airflow/variables"
        assert kwargs["connections_lookup_pattern"] == "^(?!aws_default$).*$"
    assert options[1]["cd2.schedule"] == {"Ref": "Schedule"}


def test_execution_role_reads_only_airflow_secrets_and_publishes_only_to_its_topic(
    main_template: dict,
) -> None:
    role = main_template["Resources"]["ExecutionRole"]["Properties"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    by_action: dict[str, list] = {}
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            by_action.setdefault(action, []).append(statement)
    secret_resources = [
        r["Fn::Sub"] for s in by_action["secretsmanager:GetSecretValue"] for r in s["Resource"]
    ]
    assert [r.rsplit(":secret:", 1)[1] for r in secret_resources] == [
        "airflow/connections/*",
        "airflow/variables/*",
    ]
    assert [s["Resource"] for s in by_action["sns:Publish"]] == [{"Ref": "Topic"}]
    assert "airflow:PublishMetrics" in by_action
    assert by_action["sqs:ReceiveMessage"][0]["Resource"]["Fn::Sub"].endswith(":airflow-celery-*")
    assert all(action != "*" and not action.endswith(":*") for action in by_action)


def test_database_is_serverless_v2_postgres_16_private_encrypted_tls_only(main_template: dict) -> None:
    resources = main_template["Resources"]
    cluster = resources["DbCluster"]["Properties"]
    major, minor = map(int, main_template["Parameters"]["DbEngineVersion"]["Default"].split("."))
    assert (major, minor) >= (16, 3)
    assert cluster["Engine"] == "aurora-postgresql" and "ServerlessV2ScalingConfiguration" in cluster
    assert cluster["StorageEncrypted"] is True and cluster["DeletionProtection"] is True
    assert cluster["BackupRetentionPeriod"] >= 1 and cluster["ManageMasterUserPassword"] is True
    assert cluster["EnableHttpEndpoint"] is True  # the RDS Data API of prepare-database
    assert resources["DbClusterParameterGroup"]["Properties"]["Parameters"] == {"rds.force_ssl": "1"}
    assert resources["DbInstance"]["Properties"]["PubliclyAccessible"] is False
    ingress = resources["DbSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["SourceSecurityGroupId"]) for r in ingress] == [
        (5432, {"Ref": "MwaaSecurityGroup"})
    ]


def test_bucket_is_versioned_private_encrypted_and_tls_only() -> None:
    template = load_template(TEMPLATES_DIR / "storage.yaml")
    bucket = template["Resources"]["BundleBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    statement = template["Resources"]["BundleBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }


def test_network_has_one_or_two_nat_gateways_and_private_routes() -> None:
    template = load_template(TEMPLATES_DIR / "network.yaml")
    assert template["Parameters"]["NatGatewayCount"]["AllowedValues"] == [1, 2]
    routes = resources_of_type(template, "AWS::EC2::Route")
    private = [r["Properties"] for name, r in routes.items() if name.startswith("PrivateDefaultRoute")]
    assert len(private) == 2 and all("NatGatewayId" in route for route in private)


def test_every_environment_class_bounds_the_tasks_a_worker_runs(main_template: dict) -> None:
    classes = main_template["Parameters"]["EnvironmentClass"]["AllowedValues"]
    sizing = main_template["Mappings"]["WorkerSizing"]
    assert set(sizing) == set(classes)
    for branch in main_template["Resources"]["Environment"]["Properties"]["AirflowConfigurationOptions"][
        "Fn::If"
    ][1:]:
        assert branch["celery.worker_autoscale"] == {
            "Fn::FindInMap": ["WorkerSizing", {"Ref": "EnvironmentClass"}, "Autoscale"]
        }
    # mw1.small: 2 GiB; about 0.8 GiB for MWAA's own worker processes, about 0.4 GiB per table task.
    high, low = (int(n) for n in sizing["mw1.small"]["Autoscale"].split(","))
    assert 1 <= low <= high <= 3
