"""prepare-database's statements on a real PostgreSQL, run as an Aurora-like master user (not superuser)."""

from __future__ import annotations

import base64
import hmac
from contextlib import closing

import psycopg2
import pytest

from local_dap.postgres import PostgresServer
from mwaa_infra import database

MASTER, MASTER_PASSWORD = "cd2admin_test", "master-Password-1"
ROLE, ROLE_PASSWORD = "cd2_app_test", "App0Password0Generated0By0SecretsManager"
DATABASE = "cd2_prepare_test"


@pytest.fixture
def aurora_like(postgres_server: PostgresServer):
    """A database owned by a CREATEROLE, non-superuser master, as RDS creates it; cleaned up after."""
    admin = postgres_server.connect()
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        for role in (ROLE, MASTER):
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        cur.execute(f"CREATE ROLE {MASTER} LOGIN CREATEROLE CREATEDB PASSWORD %s", (MASTER_PASSWORD,))
        cur.execute(f"CREATE DATABASE {DATABASE} OWNER {MASTER}")
    yield postgres_server
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        cur.execute(f"DROP ROLE IF EXISTS {ROLE}")
        cur.execute(f"DROP ROLE IF EXISTS {MASTER}")
    admin.close()


def connect(server: PostgresServer, user: str, password: str):
    conn = psycopg2.connect(host=server.host, port=server.port, user=user, password=password, dbname=DATABASE)
    conn.autocommit = True
    return conn


def prepare(server: PostgresServer, password: str = ROLE_PASSWORD) -> None:
    with closing(connect(server, MASTER, MASTER_PASSWORD)) as master, master.cursor() as cur:
        for statement in database.preparation_statements(DATABASE, ROLE, password):
            cur.execute(statement.sql)


def test_the_role_logs_in_and_can_do_what_replication_does(aurora_like: PostgresServer) -> None:
    prepare(aurora_like)
    prepare(aurora_like)  # idempotent: a second deploy changes nothing and fails on nothing
    with closing(connect(aurora_like, ROLE, ROLE_PASSWORD)) as app, app.cursor() as cur:
        # What the DAP client does: its own schemas, tables, types, upserts.
        cur.execute("CREATE SCHEMA IF NOT EXISTS instructure_dap")
        cur.execute("CREATE SCHEMA IF NOT EXISTS canvas")
        cur.execute("CREATE TYPE canvas.workflow_state AS ENUM ('active', 'deleted')")
        cur.execute("CREATE TABLE canvas.accounts (id bigint PRIMARY KEY, state canvas.workflow_state)")
        cur.execute(
            "INSERT INTO canvas.accounts VALUES (1, 'active') ON CONFLICT (id) DO UPDATE SET state = 'active'"
        )
        cur.execute("DROP TABLE canvas.accounts")
        cur.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication FROM pg_roles WHERE rolname = %s",
            (ROLE,),
        )
        assert cur.fetchone() == (False, False, False, False)


@pytest.mark.parametrize(
    "forbidden",
    [f"CREATE ROLE intruder_{ROLE}", f"CREATE DATABASE other_{ROLE}", "CREATE TABLE public.stray (id int)"],
)
def test_the_role_cannot_do_more(aurora_like: PostgresServer, forbidden: str) -> None:
    prepare(aurora_like)
    with closing(connect(aurora_like, ROLE, ROLE_PASSWORD)) as app, app.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(forbidden)


def test_a_new_secret_password_replaces_the_old_one(aurora_like: PostgresServer) -> None:
    prepare(aurora_like)
    prepare(aurora_like, password="A0Rotated0Password")
    connect(aurora_like, ROLE, "A0Rotated0Password").close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(aurora_like, ROLE, ROLE_PASSWORD)


def test_statements_never_show_the_password_or_its_verifier() -> None:
    statements = database.preparation_statements("cd2", "cd2_app", ROLE_PASSWORD)
    assert any("SCRAM-SHA-256$4096:" in s.sql for s in statements)
    for statement in statements:
        assert ROLE_PASSWORD not in statement.sql
        assert ROLE_PASSWORD not in statement.shown and "SCRAM-SHA-256$" not in statement.shown


def test_identifiers_are_refused_unless_plain() -> None:
    with pytest.raises(ValueError, match="identifier"):
        database.preparation_statements("cd2; DROP DATABASE cd2", "cd2_app", "x")


def test_verifier_matches_rfc_7677_test_vector() -> None:
    """RFC 7677 section 3: user "user", password "pencil"; the server signature proves the ServerKey."""
    verifier = database.scram_sha256_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    header, keys = verifier.rsplit("$", 1)
    assert header == "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    server_key = base64.b64decode(keys.split(":")[1])
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    )
    server_signature = hmac.digest(server_key, auth_message.encode(), "sha256")
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


SECOND = f"{DATABASE}_ce"


@pytest.fixture
def two_databases(aurora_like: PostgresServer):
    """The Aurora-like server with the cluster's database only; a second instance's is dropped after."""
    admin = aurora_like.connect()
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{SECOND}" WITH (FORCE)')
    yield aurora_like
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{SECOND}" WITH (FORCE)')
    admin.close()


def test_preparation_creates_each_missing_instance_database_and_grants_the_role_the_same_in_each(
    two_databases: PostgresServer,
) -> None:
    said: list[str] = []
    with closing(connect(two_databases, MASTER, MASTER_PASSWORD)) as master, master.cursor() as cur:

        def execute(statement: database.Statement) -> list:
            cur.execute(statement.sql)
            return cur.fetchall() if cur.description else []

        database.prepare(execute, [DATABASE, SECOND], ROLE, ROLE_PASSWORD, said.append)
        database.prepare(execute, [DATABASE, SECOND], ROLE, ROLE_PASSWORD, said.append)  # idempotent
    assert said.count(f"CREATE DATABASE {SECOND}") == 1 and f"CREATE DATABASE {DATABASE}" not in said
    assert said.count(f"GRANT CONNECT, CREATE ON DATABASE {SECOND} TO {ROLE}") == 2
    for name in (DATABASE, SECOND):
        app = psycopg2.connect(
            host=two_databases.host, port=two_databases.port, user=ROLE, password=ROLE_PASSWORD, dbname=name
        )
        app.autocommit = True
        with closing(app), app.cursor() as cur:
            cur.execute("CREATE SCHEMA IF NOT EXISTS instructure_dap")
            cur.execute("CREATE TABLE instructure_dap.budget (client text PRIMARY KEY)")
            cur.execute("DROP SCHEMA instructure_dap CASCADE")
    assert not any("SCRAM-SHA-256$" in line or ROLE_PASSWORD in line for line in said)
