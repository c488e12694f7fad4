"""Prepare the replica databases: the least-privilege application role the DAGs connect as.

The role (``cd2_app``, the login of ``airflow/connections/cd2_postgres``) may log in, connect to each
Canvas instance's replica database and create schemas in it: the DAP client creates and then owns
``instructure_dap`` and one schema per namespace (``canvas``, ...), with their tables and types. It gets
no other privilege: no superuser, no CREATEDB/CREATEROLE, no rds_superuser, no access to other databases'
objects. An instance database other than the cluster's own (``cd2``) is created here, by the master user.

Every statement is idempotent, so preparation runs on every deploy. They run as the master user through
the RDS Data API (HTTPS to the RDS service with IAM credentials and the RDS-managed master secret), which
works from a laptop outside the VPC, where the database itself is unreachable. The password never
leaves the machine in clear: the role gets a SCRAM-SHA-256 verifier computed here from the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

SCRAM_ITERATIONS = 4096
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Statement:
    """One SQL statement and how to print it (``shown``) without its password verifier."""

    sql: str
    shown: str


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The ``SCRAM-SHA-256$...`` verifier PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def preparation_statements(database: str, role: str, password: str) -> list[Statement]:
    """The idempotent statements that create or refresh ``role`` with only what replication needs."""
    return [*role_statements(role, password), grant_statement(database, role)]


def role_statements(role: str, password: str) -> list[Statement]:
    """Create ``role`` unless it exists; set its password (shown without its verifier)."""
    _check_identifiers(role)
    create_role = (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') "
        f"THEN CREATE ROLE {role}; END IF; END $$"
    )
    set_password = f"ALTER ROLE {role} WITH LOGIN PASSWORD '{{}}'"
    return [
        Statement(create_role, create_role),
        Statement(
            set_password.format(scram_sha256_verifier(password)), set_password.format("<SCRAM verifier>")
        ),
    ]


def grant_statement(database: str, role: str) -> Statement:
    """What ``role`` may do in ``database``: connect, and create the schemas it then owns."""
    _check_identifiers(database, role)
    grant = f"GRANT CONNECT, CREATE ON DATABASE {database} TO {role}"
    return Statement(grant, grant)


def prepare(
    execute: Callable[[Statement], list],
    databases: list[str],
    role: str,
    password: str,
    say: Callable[[str], None],
) -> None:
    """Create ``role``, then each of ``databases`` not there yet, and grant ``role`` the same in each.

    ``execute`` runs one statement as the master user and returns its rows. One role serves every Canvas
    instance's database: the first instance's also holds the API budget state of all.
    """
    for statement in role_statements(role, password):
        say(statement.shown)
        execute(statement)
    for database in databases:
        if not execute(exists_statement(database)):
            create = f"CREATE DATABASE {database}"  # owned by the master user, like the cluster's own
            say(create)
            execute(Statement(create, create))
        grant = grant_statement(database, role)
        say(grant.shown)
        execute(grant)


def exists_statement(database: str) -> Statement:
    """A query with one row if ``database`` exists, none if not."""
    _check_identifiers(database)
    exists = f"SELECT 1 FROM pg_catalog.pg_database WHERE datname = '{database}'"
    return Statement(exists, exists)


def _check_identifiers(*names: str) -> None:
    for name in names:
        if not IDENTIFIER.match(name):
            raise ValueError(f"not a plain lower-case SQL identifier: {name!r}")


def connection_login_and_password(secret_string: str) -> tuple[str, str]:
    """Login and password of an Airflow JSON connection secret (``airflow/connections/cd2_postgres``)."""
    connection = json.loads(secret_string)
    return connection["login"], connection["password"]


def run_with_data_api(
    rds_data_client, cluster_arn: str, master_secret_arn: str, database: str
) -> Callable[[Statement], list]:
    """An executor running each statement through the RDS Data API as the master user; returns its rows."""

    def execute(statement: Statement) -> list:
        return rds_data_client.execute_statement(
            resourceArn=cluster_arn, secretArn=master_secret_arn, database=database, sql=statement.sql
        ).get("records", [])

    return execute
