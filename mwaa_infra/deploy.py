"""Deploy cd2_replica on AWS: bundle, upload, CloudFormation stacks, database role, Airflow UI URL.

    python -m mwaa_infra.deploy deploy --vpc-id vpc-... --subnet-ids subnet-a,subnet-b
    python -m mwaa_infra.deploy deploy --create-network [--nat-gateways 2]
    python -m mwaa_infra.deploy deploy ... --instances default,ce[=cd2_ce]   # Canvas instances served
    python -m mwaa_infra.deploy set-dap-credentials [--instance ce]  # DAP_CLIENT_ID / DAP_CLIENT_SECRET, or asks
    python -m mwaa_infra.deploy prepare-database         # also run at the end of every deploy

``deploy`` builds the bundle (mwaa_infra.bundle), creates or updates the storage stack (the bucket),
optionally the network stack, uploads what changed (a file whose sha256 equals the one recorded in the
current object's metadata is not uploaded again), creates or updates the main stack with the object
versions of plugins.zip, requirements.txt and startup.sh, waits, prepares the database and prints the
Airflow UI URL. A stack whose template and parameters are unchanged is not touched, so a re-run with no
change changes nothing. ``--dry-run`` prints every action and calls no AWS API at all.

``--instances`` lists the Canvas instances the deployment serves (mwaa_infra.instances): the main
template gets each one's secrets and alarm (mwaa_infra.template) and preparation each one's database.
Unlike the stack parameters, the list is kept: a deploy without ``--instances`` deploys the list the stack
was last deployed with, since leaving an instance out deletes its secrets.

Credentials and region come from the usual AWS sources (profile, environment, SSO); never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mwaa_infra import bundle, database
from mwaa_infra.instances import (
    DEFAULT,
    DEFAULT_DATABASE,
    DEFAULT_INSTANCES,
    Instance,
    check_name,
    instances_spec,
    parse_instances,
)
from mwaa_infra.template import INSTANCES_OUTPUT, main_template_body

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# The folder MWAA syncs DAGs from, and the bundle files whose object versions the environment pins.
DAGS_PREFIX = "dags/"
VERSIONED_FILES = {
    "plugins.zip": "PluginsVersion",
    "requirements.txt": "RequirementsVersion",
    "startup.sh": "StartupScriptVersion",
}
SHA256_METADATA_KEY = "sha256"
CAPABILITIES = ["CAPABILITY_IAM"]
DATABASE_NAME = DEFAULT_DATABASE  # the cluster's own database, where the RDS Data API connects
CONNECTIONS_PREFIX = "airflow/connections/"
DEFAULT_DAP_API_URL = "https://api-gateway.instructure.com"


@dataclass
class Settings:
    """What one invocation deploys, and how."""

    prefix: str = "cd2"
    environment_name: str = "cd2-replica"
    region: str | None = None
    endpoint_url: str | None = None
    dry_run: bool = False
    build: bool = True
    dist: Path = REPO_ROOT / "dist"
    templates_dir: Path = TEMPLATES_DIR
    create_network: bool = False
    nat_gateways: int = 1
    vpc_id: str | None = None
    subnet_ids: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    prepare_database: bool = True
    poll_seconds: int = 30
    instances: tuple[Instance, ...] | None = None  # None: those the main stack was last deployed with

    @property
    def storage_stack(self) -> str:
        return f"{self.prefix}-storage"

    @property
    def network_stack(self) -> str:
        return f"{self.prefix}-network"

    @property
    def main_stack(self) -> str:
        return self.prefix


class Aws:
    """boto3 clients for one region and endpoint, created on first use (never in a dry run)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._clients: dict[str, object] = {}

    def __call__(self, service: str):
        if self.settings.dry_run:
            raise RuntimeError(f"dry run: no {service} client may be created")
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.client(
                service, region_name=self.settings.region, endpoint_url=self.settings.endpoint_url
            )
        return self._clients[service]


class Deployer:
    """The deploy steps; each prints what it does (or, in a dry run, would do)."""

    def __init__(self, settings: Settings, aws: Aws | None = None, say: Callable[[str], None] = print):
        self.settings = settings
        self.aws = aws or Aws(settings)
        self.say = say

    # Stacks -------------------------------------------------------------------------------------------

    def deploy_stack(
        self, name: str, template: Path, parameters: dict[str, str], body: str | None = None
    ) -> dict[str, str]:
        """Create or update stack ``name`` from ``body`` (else the template's text) unless unchanged; wait."""
        body = template.read_text() if body is None else body
        shown = ", ".join(f"{key}={value}" for key, value in sorted(parameters.items())) or "no parameters"
        if self.settings.dry_run:
            self.say(f"would create or update stack {name} from {template.name} with {shown}, and wait")
            return {}
        cloudformation = self.aws("cloudformation")
        current = self._describe_stack(name)
        if current is not None and self._unchanged(name, current, body, parameters):
            self.say(f"stack {name}: template and parameters unchanged, not updated")
            return self.stack_outputs(name)
        verb, call, waiter = (
            ("creating", cloudformation.create_stack, "stack_create_complete")
            if current is None
            else ("updating", cloudformation.update_stack, "stack_update_complete")
        )
        self.say(f"{verb} stack {name} from {template.name} with {shown}")
        call(
            StackName=name,
            TemplateBody=body,
            Parameters=_stack_parameters(parameters),
            Capabilities=CAPABILITIES,
        )
        self._wait(name, waiter)
        return self.stack_outputs(name)

    def stack_outputs(self, name: str) -> dict[str, str]:
        """Outputs of an existing stack."""
        stack = self._describe_stack(name)
        if stack is None:
            raise RuntimeError(f"stack {name} does not exist: run `python -m mwaa_infra.deploy deploy` first")
        return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}

    def deployed_instances(self) -> tuple[Instance, ...]:
        """The instances the main stack was last deployed with: its output, else the default instance."""
        stack = None if self.settings.dry_run else self._describe_stack(self.settings.main_stack)
        outputs = {output["OutputKey"]: output["OutputValue"] for output in (stack or {}).get("Outputs", [])}
        return parse_instances(outputs.get(INSTANCES_OUTPUT, ""))

    def _describe_stack(self, name: str) -> dict | None:
        cloudformation = self.aws("cloudformation")
        try:
            stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        except cloudformation.exceptions.ClientError as error:
            if "does not exist" in str(error):
                return None
            raise
        if stack["StackStatus"] == "ROLLBACK_COMPLETE":
            raise RuntimeError(
                f"stack {name} failed to create (ROLLBACK_COMPLETE): read its events, delete it, deploy again"
            )
        return stack

    def _unchanged(self, name: str, stack: dict, body: str, parameters: dict[str, str]) -> bool:
        current_body = self.aws("cloudformation").get_template(StackName=name, TemplateStage="Original")[
            "TemplateBody"
        ]
        current_parameters = {
            p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])
        }
        return current_body == body and all(current_parameters.get(k) == v for k, v in parameters.items())

    def _wait(self, name: str, waiter_name: str) -> None:
        # MWAA environments take 20-40 minutes to create: allow two hours.
        delay = max(1, self.settings.poll_seconds)
        self.aws("cloudformation").get_waiter(waiter_name).wait(
            StackName=name, WaiterConfig={"Delay": delay, "MaxAttempts": max(1, 7200 // delay)}
        )

    # Uploads ------------------------------------------------------------------------------------------

    def require_versioning(self, bucket: str) -> None:
        """Refuse a bucket without versioning: MWAA pins object versions, and so does the main stack."""
        if self.settings.dry_run:
            return
        status = self.aws("s3").get_bucket_versioning(Bucket=bucket).get("Status")
        if status != "Enabled":
            raise RuntimeError(f"bucket {bucket} has versioning {status or 'off'}; MWAA needs it Enabled")

    def upload_bundle(self, bucket: str) -> dict[str, str]:
        """Upload the changed files of ``dist/``; delete DAG objects no longer bundled; return key -> version."""
        dist = self.settings.dist
        files = bundle.bundle_files(dist)
        missing = [name for name in VERSIONED_FILES if Path(name) not in files]
        if missing and self.settings.dry_run:
            self.say(
                f"would upload every file of {dist} (not built yet) to s3://{bucket}/, unless already there"
            )
            return {name: "<version after upload>" for name in VERSIONED_FILES}
        if missing:
            raise FileNotFoundError(f"{dist} lacks {', '.join(missing)}: run `make bundle` first")
        versions = {}
        for relative in files:
            key = relative.as_posix()
            versions[key] = self._upload(bucket, key, dist / relative)
        self._delete_stale_dags(bucket, {key for key in versions if key.startswith(DAGS_PREFIX)})
        return versions

    def _upload(self, bucket: str, key: str, path: Path) -> str:
        digest = bundle.sha256_of(path)
        if self.settings.dry_run:
            self.say(
                f"would upload {path} to s3://{bucket}/{key} unless its sha256 {digest[:12]}... is there"
            )
            return "<version after upload>"
        s3 = self.aws("s3")
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except s3.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            head = None
        if head is not None and head.get("Metadata", {}).get(SHA256_METADATA_KEY) == digest:
            self.say(f"s3://{bucket}/{key} unchanged (version {head['VersionId']})")
            return head["VersionId"]
        response = s3.put_object(
            Bucket=bucket, Key=key, Body=path.read_bytes(), Metadata={SHA256_METADATA_KEY: digest}
        )
        self.say(f"uploaded {path} to s3://{bucket}/{key} (version {response['VersionId']})")
        return response["VersionId"]

    def _delete_stale_dags(self, bucket: str, bundled_keys: set[str]) -> None:
        if self.settings.dry_run:
            self.say(f"would delete objects under s3://{bucket}/{DAGS_PREFIX} that the bundle no longer has")
            return
        s3 = self.aws("s3")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=DAGS_PREFIX):
            for item in page.get("Contents", []):
                if item["Key"] not in bundled_keys:
                    s3.delete_object(Bucket=bucket, Key=item["Key"])
                    self.say(f"deleted s3://{bucket}/{item['Key']} (no longer in the bundle)")

    # Database and credentials -------------------------------------------------------------------------

    def prepare_database(self, outputs: dict[str, str], instances: tuple[Instance, ...]) -> None:
        """Create each instance's database and the application role, through the RDS Data API (idempotent).

        The role's login and password are those of ``cd2_postgres``; every other instance's connection is
        given them too (a password changed in ``cd2_postgres`` reaches them here).
        """
        databases = [instance.database for instance in instances]
        if self.settings.dry_run:
            self.say(
                f"would run through the RDS Data API on database {DATABASE_NAME} as the master user "
                "(CREATE DATABASE only for a database not there yet):"
            )
            cluster_database = database.exists_statement(DATABASE_NAME)  # exists; the others may not yet
            database.prepare(
                lambda statement: [[1]] if statement == cluster_database else [],
                databases,
                "cd2_app",
                "<from the secret>",
                lambda line: self.say(f"    {line}"),
            )
            if instances != DEFAULT_INSTANCES:
                self.say(
                    "would give every other instance's connection the login and password of cd2_postgres"
                )
            return
        secrets = self.aws("secretsmanager")
        source = secrets.get_secret_value(SecretId=outputs["PostgresConnectionSecretArn"])["SecretString"]
        login, password = database.connection_login_and_password(source)
        execute = database.run_with_data_api(
            self.aws("rds-data"), outputs["DbClusterArn"], outputs["DbMasterSecretArn"], DATABASE_NAME
        )
        database.prepare(execute, databases, login, password, lambda line: self.say(f"database: {line}"))
        for instance in instances:
            if instance.name == DEFAULT:
                continue
            secret_id = CONNECTIONS_PREFIX + instance.postgres_connection
            connection = json.loads(secrets.get_secret_value(SecretId=secret_id)["SecretString"])
            if (connection.get("login"), connection.get("password")) != (login, password):
                value = json.dumps(connection | {"login": login, "password": password})
                secrets.put_secret_value(SecretId=secret_id, SecretString=value)
                self.say(f"secret {secret_id}: login and password set to those of the application role")

    def set_dap_credentials(
        self, base_url: str, client_id: str, client_secret: str, instance: str = DEFAULT
    ) -> None:
        """Write instance's dap_NAME connection (host = API URL, login = client id, password = secret)."""
        secret_id = dap_secret_id(instance)
        if self.settings.dry_run:
            self.say(f"would put a new value of secret {secret_id} (host {base_url}, client id and secret)")
            return
        value = dap_connection_secret(base_url, client_id, client_secret)
        self.aws("secretsmanager").put_secret_value(SecretId=secret_id, SecretString=value)
        self.say(f"secret {secret_id} updated (host {base_url}); the next task run uses it")

    def require_dap_secret(self, instance: str) -> None:
        """Refuse an instance whose DAP secret the stack did not create (before anyone types credentials)."""
        if self.settings.dry_run:
            return
        secrets = self.aws("secretsmanager")
        try:
            secrets.describe_secret(SecretId=dap_secret_id(instance))
        except secrets.exceptions.ResourceNotFoundException:
            raise RuntimeError(
                f"secret {dap_secret_id(instance)} does not exist: deploy with --instances listing {instance} first"
            ) from None

    # The whole deployment -----------------------------------------------------------------------------

    def _instances(self) -> tuple[Instance, ...]:
        """The Canvas instances to deploy: ``--instances``, else those the stack was last deployed with."""
        if self.settings.instances is not None:
            chosen, note = self.settings.instances, ""
        elif self.settings.dry_run:
            chosen, note = self.deployed_instances(), " (a deploy without --instances keeps the stack's list)"
        else:
            chosen, note = self.deployed_instances(), " (as last deployed; --instances changes them)"
        self.say(f"Canvas instances: {instances_spec(chosen)}{note}")
        return chosen

    def deploy(self) -> dict[str, str]:
        """Run every step; return the main stack's outputs."""
        settings = self.settings
        instances = self._instances()
        main_body = main_template_body((settings.templates_dir / "cd2.yaml").read_text(), instances)
        if settings.build:
            if settings.dry_run:
                self.say(f"would build the bundle into {settings.dist} (python -m mwaa_infra.bundle)")
            else:
                self.say(f"building the bundle into {settings.dist}")
                version = settings.parameters.get("AirflowVersion", bundle.DEFAULT_AIRFLOW_VERSION)
                bundle.build_bundle(settings.dist, airflow_version=version)
        storage = self.deploy_stack(settings.storage_stack, settings.templates_dir / "storage.yaml", {})
        bucket = storage.get("BucketName", f"<bucket of stack {settings.storage_stack}>")
        self.require_versioning(bucket)
        if settings.create_network:
            network = self.deploy_stack(
                settings.network_stack,
                settings.templates_dir / "network.yaml",
                {"NatGatewayCount": str(settings.nat_gateways)},
            )
            vpc_id = network.get("VpcId", f"<VPC of stack {settings.network_stack}>")
            subnet_ids = network.get(
                "PrivateSubnetIds", f"<private subnets of stack {settings.network_stack}>"
            )
        else:
            vpc_id, subnet_ids = settings.vpc_id, settings.subnet_ids
        versions = self.upload_bundle(bucket)
        parameters = {
            **settings.parameters,
            "EnvironmentName": settings.environment_name,
            "BucketName": bucket,
            "VpcId": vpc_id,
            "PrivateSubnetIds": subnet_ids,
            **{parameter: versions[name] for name, parameter in VERSIONED_FILES.items()},
        }
        outputs = self.deploy_stack(
            settings.main_stack, settings.templates_dir / "cd2.yaml", parameters, body=main_body
        )
        if settings.prepare_database:
            self.prepare_database(outputs, instances)
        if "WebserverUrl" in outputs:
            self.say(f"Airflow UI: https://{outputs['WebserverUrl']}")
        return outputs


def dap_secret_id(instance: str) -> str:
    """The secret of instance's DAP connection (dap_default, dap_NAME)."""
    return f"{CONNECTIONS_PREFIX}dap_{instance}"


def dap_connection_secret(base_url: str, client_id: str, client_secret: str) -> str:
    """The JSON of a DAP Airflow connection (dap_default, dap_NAME) as Secrets Manager stores it."""
    return json.dumps({"conn_type": "http", "host": base_url, "login": client_id, "password": client_secret})


def _stack_parameters(parameters: dict[str, str]) -> list[dict[str, str]]:
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in sorted(parameters.items())]


def _key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected Key=Value, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None) -> tuple[str, Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m mwaa_infra.deploy", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="cd2", help="stack name prefix, lower case (default cd2)")
    common.add_argument("--environment-name", default="cd2-replica", help="MWAA environment name")
    common.add_argument("--region", default=None, help="AWS region (default: your AWS configuration's)")
    common.add_argument("--endpoint-url", default=None, help=argparse.SUPPRESS)  # tests: a local moto server
    common.add_argument("--dry-run", action="store_true", help="print every action, call no AWS API")
    common.add_argument("--poll-seconds", type=int, default=30, help="seconds between stack status polls")
    commands = parser.add_subparsers(dest="command", required=True)

    deploy = commands.add_parser("deploy", parents=[common], help="bundle, upload, deploy the stacks")
    deploy.add_argument("--skip-bundle", action="store_true", help="upload the existing dist/ as it is")
    deploy.add_argument("--dist", type=Path, default=REPO_ROOT / "dist", help="bundle folder (default dist/)")
    deploy.add_argument("--templates-dir", type=Path, default=TEMPLATES_DIR, help=argparse.SUPPRESS)
    network = deploy.add_mutually_exclusive_group(required=True)
    network.add_argument("--create-network", action="store_true", help="deploy the network stack too")
    network.add_argument("--vpc-id", help="existing VPC (with --subnet-ids)")
    deploy.add_argument("--subnet-ids", help="two private subnets in different AZs, comma-separated")
    deploy.add_argument("--nat-gateways", type=int, choices=[1, 2], default=1, help="with --create-network")
    deploy.add_argument(
        "--parameter",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="main stack parameter, e.g. EnvironmentClass=mw1.medium, AlarmEmail=ops@example.edu (repeatable)",
    )
    deploy.add_argument(
        "--instances",
        metavar="NAME[=DATABASE],...",
        help="the Canvas instances served, in order (default: as last deployed, else 'default'); "
        "instance NAME writes database cd2_<name in lower case> unless given, 'default' writes cd2",
    )
    deploy.add_argument("--skip-database-preparation", action="store_true", help=argparse.SUPPRESS)

    commands.add_parser("prepare-database", parents=[common], help="create or refresh the application role")
    credentials = commands.add_parser(
        "set-dap-credentials",
        parents=[common],
        help="store the DAP client id and secret (from DAP_CLIENT_ID / DAP_CLIENT_SECRET, else prompted)",
    )
    credentials.add_argument("--base-url", default=DEFAULT_DAP_API_URL, help="DAP API base URL")
    credentials.add_argument(
        "--instance",
        default=DEFAULT,
        help=f"the Canvas instance whose dap_NAME connection (default {DEFAULT})",
    )

    args = parser.parse_args(argv)
    settings = Settings(
        prefix=args.prefix,
        environment_name=args.environment_name,
        region=args.region,
        endpoint_url=args.endpoint_url,
        dry_run=args.dry_run,
        poll_seconds=args.poll_seconds,
    )
    if args.command == "deploy":
        if args.vpc_id and not args.subnet_ids:
            parser.error("--vpc-id needs --subnet-ids")
        settings.build = not args.skip_bundle
        settings.dist = args.dist
        settings.templates_dir = args.templates_dir
        settings.create_network = args.create_network
        settings.nat_gateways = args.nat_gateways
        settings.vpc_id = args.vpc_id
        settings.subnet_ids = args.subnet_ids
        settings.parameters = dict(args.parameter)
        settings.prepare_database = not args.skip_database_preparation
        try:
            settings.instances = None if args.instances is None else parse_instances(args.instances)
        except ValueError as error:
            parser.error(f"--instances: {error}")
    if args.command == "set-dap-credentials":
        try:
            check_name(args.instance)
        except ValueError as error:
            parser.error(f"--instance: {error}")
    return args.command, settings, args


def main(argv: list[str] | None = None) -> int:
    command, settings, args = parse_args(argv)
    deployer = Deployer(settings)
    if settings.dry_run:
        deployer.say("dry run: nothing below is done, no AWS API is called")
    if command == "deploy":
        deployer.deploy()
    elif command == "prepare-database":
        outputs = {} if settings.dry_run else deployer.stack_outputs(settings.main_stack)
        deployer.prepare_database(outputs, deployer.deployed_instances())
    elif command == "set-dap-credentials":
        deployer.require_dap_secret(args.instance)
        client_id = os.environ.get("DAP_CLIENT_ID") or ("" if settings.dry_run else input("DAP client id: "))
        client_secret = os.environ.get("DAP_CLIENT_SECRET") or (
            "" if settings.dry_run else getpass.getpass("DAP client secret: ")
        )
        if not settings.dry_run and not (client_id and client_secret):
            raise SystemExit("a DAP client id and client secret are both needed")
        deployer.set_dap_credentials(args.base_url, client_id, client_secret, args.instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
