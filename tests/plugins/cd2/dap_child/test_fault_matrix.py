"""The fault matrix: real failures against the real client, emulator and PostgreSQL, each followed by one
clean re-run after which the replica equals the source; and nothing secret in what the failures say.

PostgreSQL restarts are real: this module has its own server (the others' session server is never
restarted), and :meth:`PostgresServer.restart` stops it in ``fast`` mode, which ends every session with
FATAL ``57P01 terminating connection due to administrator command`` as a failover does, then starts it
again. The moment is held, not raced: a test trigger makes the statement to interrupt (an init's COPY, a
sync's upsert, the client's ``ALTER TABLE``) sleep, the test sees it sleeping in ``pg_stat_activity`` and
restarts the server under it. Against a server named by ``CD2_TEST_DATABASE_URL`` those cases skip.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from cd2.contract import Action, TableJob, TableResult
from cd2.hooks.dap import DapHook, DapPermanentError, DapTransientError
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator
from local_dap.postgres import PostgresServer, server_for_tests
from local_dap.truth import replica_truth
from tests.conftest import POSTGRES_VERSION
from tests.support.paths import DAP_PYTHON

NS = "canvas"
PLUGINS = Path(__file__).resolve().parents[4] / "plugins"
ODD_NAMES = ("x,accounts", 'quo"te', "with space", "all")
ODD_SCHEMA = {
    "version": 1,
    "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "meta": {
                "type": "object",
                "properties": {"ts": {"type": "string", "format": "date-time"}},
                "additionalProperties": False,
                "required": ["ts"],
            },
            "key": {
                "type": "object",
                "properties": {"id": {"type": "integer", "format": "int64"}},
                "additionalProperties": False,
                "required": ["id"],
            },
            "value": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 255},
                    "workflow_state": {"type": "string", "enum": ["active", "deleted"]},
                    "score": {"type": "integer", "format": "int32"},
                },
                "additionalProperties": False,
                "required": ["workflow_state"],
            },
        },
        "additionalProperties": False,
        "required": ["key"],
    },
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """An emulator that also serves tables named with a comma, a quote, a space, and ``all``."""
    schemas = tmp_path_factory.mktemp("schemas")
    (schemas / NS).mkdir()
    for name in ODD_NAMES:
        (schemas / NS / f"{name}.json").write_text(json.dumps(ODD_SCHEMA))
    with start_emulator(rows=30, schemas=schemas) as running:
        yield running


@pytest.fixture
def hook(emulator, database_url, monkeypatch) -> DapHook:
    emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    return DapHook()


@pytest.fixture(scope="module")
def postgres_server(request) -> PostgresServer:
    """This module's own server, so restarting it disturbs no other test (or ``CD2_TEST_DATABASE_URL``'s)."""
    with server_for_tests() as server:
        request.config.stash[POSTGRES_VERSION] = server.server_version
        yield server


class Session:
    """The test's own session to its database; :meth:`reconnect` after a restart ended it."""

    def __init__(self, server: PostgresServer, dbname: str) -> None:
        self.server, self.dbname = server, dbname
        self.conn = server.connect(dbname)

    def cursor(self):
        return self.conn.cursor()

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = self.server.connect(self.dbname)


@pytest.fixture
def db(postgres_server, database_url):
    session = Session(postgres_server, database_url.rsplit("/", 1)[1])
    yield session
    session.conn.close()


@pytest.fixture
def restartable(postgres_server) -> PostgresServer:
    if not postgres_server.restartable:
        pytest.skip("restarts need a server the tests started, not CD2_TEST_DATABASE_URL's")
    return postgres_server


# The emulator here enforces no rate limit: a short pacer window keeps the pacer in the path without
# making a test of ten jobs wait a minute for the published 5 a minute.
PACER_WINDOW_SECONDS = 1.0


def run(hook: DapHook, action: Action, table: str, **options) -> TableResult:
    job = TableJob(
        action=action, namespace=NS, table=table, api_limit_window_seconds=PACER_WINDOW_SECONDS, **options
    )
    return hook.run_table_job(job)


def in_step(emulator, database_url, table: str) -> bool:
    return emulator.truth(NS, table) == replica_truth(database_url, NS, table)


def query(db, sql: str, *args):
    with db.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchall() if cur.description else None


def table_sync_row(db, table: str):
    return query(
        db,
        "SELECT timestamp, schema_version, schema_description FROM instructure_dap.table_sync "
        "WHERE source_namespace = %s AND source_table = %s",
        NS,
        table,
    )


def copy_state(db, database_url, table: str):
    """What must survive a failed re-init exactly: the table's rows and its table_sync row."""
    return replica_truth(database_url, NS, table), table_sync_row(db, table)


def stages(db) -> list[str]:
    return [r[0] for r in query(db, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cd2\\_stage\\_%'")]


def assert_no_secret(emulator, postgres_server, *texts: str) -> None:
    for text in texts:
        for secret in (emulator.client_secret, postgres_server.password):
            assert secret not in text


def error_texts(error: BaseException, capfd) -> list[str]:
    """The error, its XCom form and the task log the hook wrote (the relayed child log included)."""
    task_log = "".join(capfd.readouterr())
    assert "[dap]" in task_log, "the child's relayed log was captured"
    return [str(error), json.dumps(error.error.to_dict()), task_log]


@contextmanager
def in_background(target):
    """Run ``target()`` in a thread; yield a dict that gets its ``result`` or ``error``."""
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = target()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=work)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(300)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# Test-only functions that make a statement sleep until the test restarts the server under it: a
# statement-level trigger (fires once per INSERT or COPY), an event trigger (before DDL), and one that
# puts the first on every new table named users (the init's, created in its stage just before the COPY).
HOLDS = """
CREATE FUNCTION hold_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(120); RETURN NULL; END $$;
CREATE FUNCTION hold_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(120); END $$;
CREATE FUNCTION hold_new_users_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE created record;
BEGIN
  FOR created IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
    IF (SELECT relname FROM pg_class WHERE oid = created.objid) = 'users' THEN
      EXECUTE format('CREATE TRIGGER hold BEFORE INSERT ON %s FOR EACH STATEMENT '
                     'EXECUTE FUNCTION hold_statement()', created.object_identity);
    END IF;
  END LOOP;
END $$
"""


# What the client sees of a restart: the server's FATAL 57P01, or (as asyncpg reports a statement in
# flight when the server ends the session) the connection closing under it.
GONE = ("AdminShutdownError", "ConnectionDoesNotExistError")


def restart_when_held(server: PostgresServer, db: Session, pattern: str) -> None:
    """Once a statement matching ``pattern`` sleeps in a hold, restart the server (fast) under it."""
    wait_for(
        lambda: query(
            db,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep' "
            "AND query ILIKE %s",
            pattern,
        ),
        what=f"a held statement like {pattern}",
    )
    server.restart()
    db.reconnect()


# -- re-init keeps the previous copy ---------------------------------------------------------------


def test_reinit_keeps_the_previous_copy_queryable_then_swaps_it_in(hook, emulator, db, database_url):
    run(hook, Action.INIT, "accounts")
    emulator.advance(changes=10)
    before = copy_state(db, database_url, "accounts")
    emulator.inject_fault("slow_job", table="accounts", polls=2)  # about 10 s of polling
    seen = []
    with in_background(lambda: run(hook, Action.INIT, "accounts", reinit=True)) as outcome:
        wait_for(lambda: stages(db), what="the stage")
        while "result" not in outcome and "error" not in outcome:
            state = copy_state(db, database_url, "accounts")
            if stages(db):  # read before the swap committed
                seen.append(state)
            time.sleep(0.2)
    assert outcome["result"].outcome == "initialized" and outcome["result"].reinit
    assert seen and all(state == before for state in seen)  # readers saw the previous copy throughout
    assert in_step(emulator, database_url, "accounts") and not stages(db)


def test_a_reinit_whose_download_breaks_leaves_the_previous_copy(
    hook, emulator, db, database_url, postgres_server, capfd
):
    run(hook, Action.INIT, "users")
    emulator.advance(changes=10)
    before = copy_state(db, database_url, "users")
    emulator.inject_fault("broken_download", times=None)
    with pytest.raises(
        DapTransientError, match="previous copy, its rows and its table_sync row are unchanged"
    ) as error:
        run(hook, Action.INIT, "users", reinit=True)
    assert "ClientPayloadError" in str(error.value) and "What to do:" in str(error.value)
    assert copy_state(db, database_url, "users") == before and not stages(db)
    assert_no_secret(emulator, postgres_server, *error_texts(error.value, capfd))
    emulator.clear_faults()
    assert run(hook, Action.INIT, "users", reinit=True).outcome == "initialized"
    assert in_step(emulator, database_url, "users")


@pytest.fixture
def tiny_tmpdir(tmp_path, monkeypatch):
    """A TMPDIR on a 64 KiB tmpfs: the client's download fills it."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    monkeypatch.setenv("TMPDIR", str(mount))
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_tmpdir_full_during_a_reinit_is_permanent_and_keeps_the_previous_copy(
    hook, emulator, db, database_url, postgres_server, capfd, monkeypatch, tiny_tmpdir
):
    monkeypatch.delenv("TMPDIR")
    run(hook, Action.INIT, "users")
    emulator.reset(rows=3000)  # a snapshot bigger than the 64 KiB TMPDIR
    before = copy_state(db, database_url, "users")
    monkeypatch.setenv("TMPDIR", str(tiny_tmpdir))
    # the streaming disk guard (or, without it, ENOSPC) says so before the stage is swapped in
    with pytest.raises(
        DapPermanentError, match=r"disk \(TMPDIR\) is full|not enough space in TMPDIR"
    ) as error:
        run(hook, Action.INIT, "users", reinit=True)
    assert "unchanged" in str(error.value) and "TMPDIR" in str(error.value)
    assert copy_state(db, database_url, "users") == before
    assert_no_secret(emulator, postgres_server, *error_texts(error.value, capfd))
    monkeypatch.delenv("TMPDIR")
    assert run(hook, Action.INIT, "users", reinit=True).outcome == "initialized"
    assert in_step(emulator, database_url, "users")


def test_the_child_sigkilled_mid_init_leaves_the_previous_copy(hook, emulator, db, database_url):
    run(hook, Action.INIT, "users")
    emulator.reset(rows=20000)
    before = copy_state(db, database_url, "users")
    with in_background(lambda: run(hook, Action.INIT, "users", reinit=True)) as outcome:
        wait_for(
            lambda: query(
                db, "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query ILIKE 'COPY%%'"
            ),
            what="the COPY",
        )
        hook._child.kill()
    assert isinstance(outcome["error"], DapTransientError) and "signal 9" in str(outcome["error"])
    assert copy_state(db, database_url, "users") == before
    assert run(hook, Action.INIT, "users", reinit=True).outcome == "initialized"
    assert in_step(emulator, database_url, "users") and not stages(db)


# -- PostgreSQL going away ---------------------------------------------------------------------------


def idle_in_transaction(postgres_server, database_url: str, table: str):
    """A reader that read ``table`` and left its transaction open (a BI tool's idle session)."""
    conn = postgres_server.connect(database_url.rsplit("/", 1)[1])
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {NS}.{table}")
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    return conn, pid


def test_a_reader_idle_in_a_transaction_holds_back_the_swap_but_no_other_reader(
    hook, emulator, db, database_url, postgres_server
):
    run(hook, Action.INIT, "accounts")
    emulator.advance(changes=10)
    idle, _ = idle_in_transaction(postgres_server, database_url, "accounts")
    reader = postgres_server.connect(database_url.rsplit("/", 1)[1])
    try:
        with in_background(lambda: run(hook, Action.INIT, "accounts", reinit=True)) as outcome:
            for _ in range(3):  # three tries of the swap, each queueing readers behind its DROP a moment
                wait_for(
                    lambda: query(
                        db,
                        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DROP %'",
                    ),
                    what="the swap waiting for the idle reader",
                )
                with reader.cursor() as cur:
                    # A waiting DROP queues every new reader; a swap that waited on would hang this one.
                    cur.execute("SET statement_timeout = '60s'")
                    cur.execute(f"SELECT count(*) FROM {NS}.accounts")
                assert not outcome, "the swap went ahead while a reader's transaction held the table"
            idle.commit()
        assert outcome["result"].outcome == "initialized"
        assert in_step(emulator, database_url, "accounts")
    finally:
        idle.close()
        reader.close()


def test_a_reader_idle_for_longer_than_the_lock_wait_fails_the_swap_naming_it(
    hook, emulator, db, database_url, postgres_server, capfd
):
    run(hook, Action.INIT, "accounts")
    emulator.advance(changes=10)
    before = copy_state(db, database_url, "accounts")
    idle, pid = idle_in_transaction(postgres_server, database_url, "accounts")
    try:
        with pytest.raises(DapTransientError, match="kept a transaction open") as error:
            run(hook, Action.INIT, "accounts", reinit=True, lock_wait_seconds=5)
    finally:
        idle.close()
    assert f"pid {pid} (user " in str(error.value) and "idle in transaction" in str(error.value)
    assert "idle_in_transaction_session_timeout" in str(error.value)
    assert copy_state(db, database_url, "accounts") == before and not stages(db)
    assert_no_secret(emulator, postgres_server, *error_texts(error.value, capfd))
    assert run(hook, Action.INIT, "accounts", reinit=True).outcome == "initialized"
    assert in_step(emulator, database_url, "accounts")


# Each loader's write: the fast path's INSERT from its stage, the client's COPY or upsert.
FAST_PATH_ON_AND_OFF = pytest.mark.parametrize("fast", ["1", "0"], ids=["fast path", "client's loader"])
INIT_WRITE = {"1": "%INSERT INTO%users%", "0": "COPY%users%"}


@FAST_PATH_ON_AND_OFF
def test_postgres_restarted_during_an_init_write_is_transient(
    hook, emulator, db, database_url, restartable, capfd, monkeypatch, fast
):
    monkeypatch.setenv("CD2_FAST_INIT", fast)
    query(db, HOLDS)
    query(db, "CREATE EVENT TRIGGER hold_new_users ON ddl_command_end WHEN TAG IN ('CREATE TABLE') "
              "EXECUTE FUNCTION hold_new_users_tables()")  # fmt: skip
    with in_background(lambda: run(hook, Action.INIT, "users")) as outcome:
        restart_when_held(restartable, db, INIT_WRITE[fast])
    error = outcome["error"]
    assert isinstance(error, DapTransientError), error
    assert error.error.category == "transient" and error.error.type in GONE, error.error
    assert "PostgreSQL was unavailable or restarted" in str(error) and "reconnects" in str(error)
    assert_no_secret(emulator, restartable, *error_texts(error, capfd))
    query(db, "DROP EVENT TRIGGER hold_new_users")
    assert run(hook, Action.INIT, "users").outcome == "initialized"
    assert in_step(emulator, database_url, "users") and not stages(db)


@FAST_PATH_ON_AND_OFF
def test_postgres_restarted_during_a_sync_upsert_is_transient(
    hook, emulator, db, database_url, restartable, capfd, monkeypatch, fast
):
    monkeypatch.setenv("CD2_FAST_SYNC", fast)
    run(hook, Action.INIT, "users")
    before = copy_state(db, database_url, "users")
    emulator.advance(changes=50)
    query(db, HOLDS)
    query(db, "CREATE TRIGGER hold BEFORE INSERT ON canvas.users FOR EACH STATEMENT "
              "EXECUTE FUNCTION hold_statement()")  # fmt: skip
    with in_background(lambda: run(hook, Action.SYNC, "users")) as outcome:
        restart_when_held(restartable, db, "%INSERT INTO%users%")
    error = outcome["error"]
    assert isinstance(error, DapTransientError), error
    assert error.error.category == "transient" and error.error.type in GONE, error.error
    assert "PostgreSQL was unavailable or restarted" in str(error) and "reconnects" in str(error)
    assert copy_state(db, database_url, "users") == before  # nothing upserted, the watermark unmoved
    assert_no_secret(emulator, restartable, *error_texts(error, capfd))
    query(db, "DROP TRIGGER hold ON canvas.users")
    assert run(hook, Action.SYNC, "users").outcome == "synced"
    assert in_step(emulator, database_url, "users")


def test_postgres_restarted_during_the_clients_alter_table_is_transient_not_view_advice(
    hook, emulator, db, database_url, restartable, capfd
):
    run(hook, Action.INIT, "accounts")
    query(db, HOLDS)
    query(db, "CREATE EVENT TRIGGER hold_alter ON ddl_command_start WHEN TAG IN ('ALTER TABLE') "
              "EXECUTE FUNCTION hold_ddl()")  # fmt: skip
    emulator.bump_schema(NS, "accounts", "add_column", column="added_for_fault")
    emulator.advance(changes=5)
    with in_background(lambda: run(hook, Action.SYNC, "accounts")) as outcome:
        restart_when_held(restartable, db, "%ALTER TABLE%accounts%")
    error = outcome["error"]
    assert isinstance(error, DapTransientError), error
    text = str(error)
    assert error.error.category == "transient" and error.error.type in GONE, text
    assert "statement: ALTER TABLE" in text and "view" not in text.lower()
    assert_no_secret(emulator, restartable, *error_texts(error, capfd))
    query(db, "DROP EVENT TRIGGER hold_alter")
    assert run(hook, Action.SYNC, "accounts").outcome == "synced"
    assert in_step(emulator, database_url, "accounts")


# -- views --------------------------------------------------------------------------------------------

VIEWS = """
CREATE ROLE analyst_{db};
CREATE SCHEMA reports;
CREATE VIEW reports.v_names AS SELECT id, name FROM canvas.users;
COMMENT ON VIEW reports.v_names IS 'names for the dean''s office';
COMMENT ON COLUMN reports.v_names.name IS 'display name';
GRANT SELECT ON reports.v_names TO analyst_{db};
CREATE VIEW reports.v_on_view AS SELECT count(*) AS n FROM reports.v_names;
CREATE MATERIALIZED VIEW reports.m_users AS SELECT id, workflow_state FROM canvas.users;
CREATE UNIQUE INDEX m_users_id ON reports.m_users (id);
CREATE VIEW reports.v_typed AS SELECT id, {typed} AS typed FROM canvas.users;
CREATE VIEW reports.v_dropped AS SELECT id, {dropped} AS dropped FROM canvas.users;
CREATE VIEW reports.v_on_dropped AS SELECT count(*) AS n FROM reports.v_dropped;
"""


def view_facts(db, view: str):
    return query(
        db,
        "SELECT pg_get_viewdef(c.oid), pg_get_userbyid(c.relowner), c.relacl::text, "
        "obj_description(c.oid, 'pg_class') FROM pg_class c WHERE c.oid = to_regclass(%s)",
        view,
    )


def test_views_survive_a_type_change_a_dropped_column_and_a_reinit(hook, emulator, db, database_url):
    run(hook, Action.INIT, "users")
    typed = emulator.bump_schema(NS, "users", "change_type")["column"]  # applied by the next sync
    nullable = query(db, "SELECT column_name FROM information_schema.columns WHERE table_schema = 'canvas' "
                         "AND table_name = 'users' AND is_nullable = 'YES' ORDER BY ordinal_position")  # fmt: skip
    protected = {typed, "name", "workflow_state", "state", "updated_at", "created_at"}
    dropped = next(c for (c,) in nullable if c not in protected)
    dbname = database_url.rsplit("/", 1)[1]
    for statement in VIEWS.format(db=dbname, typed=typed, dropped=dropped).strip().split(";\n"):
        query(db, statement)
    kept = ["reports.v_names", "reports.v_on_view", "reports.m_users", "reports.v_typed"]
    facts = {v: view_facts(db, v) for v in kept}

    emulator.advance(changes=10)
    changed = run(hook, Action.SYNC, "users")
    assert changed.outcome == "synced" and changed.views_needing_person is None
    assert {v: view_facts(db, v) for v in kept} == facts
    assert in_step(emulator, database_url, "users")

    emulator.bump_schema(NS, "users", "drop_column", column=dropped)
    emulator.advance(changes=10)
    dropped_result = run(hook, Action.SYNC, "users")
    assert dropped_result.outcome == "synced"
    assert [v.split(" ")[0] for v in dropped_result.views_needing_person] == [
        "reports.v_dropped",
        "reports.v_on_dropped",
    ]
    # PostgreSQL 15 says 'column users.x does not exist', 18 'column "x" does not exist'
    assert dropped in dropped_result.views_needing_person[0]
    assert "does not exist" in dropped_result.views_needing_person[0]
    assert query(db, "SELECT to_regclass('reports.v_dropped')") == [(None,)]
    assert {v: view_facts(db, v) for v in kept} == facts
    assert in_step(emulator, database_url, "users")

    emulator.advance(changes=10)
    reinit = run(hook, Action.INIT, "users", reinit=True)
    assert reinit.outcome == "initialized"
    assert query(db, "SELECT count(*) FROM reports.m_users") == query(db, "SELECT count(*) FROM canvas.users")
    assert query(db, "SELECT n FROM reports.v_on_view") == query(db, "SELECT count(*) FROM canvas.users")
    assert view_facts(db, "reports.v_typed") == facts["reports.v_typed"]
    assert query(db, "SELECT indexname FROM pg_indexes WHERE schemaname = 'reports'") == [("m_users_id",)]
    assert len(reinit.views_needing_person) == 2  # still named, until a person acts
    assert in_step(emulator, database_url, "users")


# -- schema changes and snapshots the API asks for ----------------------------------------------------


def test_a_nullable_change_and_snapshot_required(hook, emulator, db, database_url):
    run(hook, Action.INIT, "accounts")
    required = query(db, "SELECT column_name FROM information_schema.columns WHERE table_schema = 'canvas' "
                         "AND table_name = 'accounts' AND is_nullable = 'NO' AND column_name <> 'id' ORDER BY 1")  # fmt: skip
    change = emulator.bump_schema(NS, "accounts", "nullable")
    assert (change["column"],) in required
    emulator.advance(changes=10)
    assert run(hook, Action.SYNC, "accounts").outcome == "synced"
    nullable = query(db, "SELECT is_nullable FROM information_schema.columns WHERE table_schema = 'canvas' "
                         "AND table_name = 'accounts' AND column_name = %s", change["column"])  # fmt: skip
    assert nullable == [("YES",)] and table_sync_row(db, "accounts")[0][1] == change["version"]
    assert in_step(emulator, database_url, "accounts")

    emulator.advance(changes=5)
    emulator.inject_fault("snapshot_required", table="accounts")
    needed = run(hook, Action.SYNC, "accounts")
    assert (needed.outcome, needed.reinit) == ("init_needed", True)
    assert run(hook, Action.INIT, "accounts", reinit=True).outcome == "initialized"
    assert in_step(emulator, database_url, "accounts")


# -- names and overlaps ---------------------------------------------------------------------------------


def test_odd_table_names_are_replicated_and_reinitialized_alone(hook, emulator, db, database_url):
    run(hook, Action.INIT, "accounts")
    for name in ODD_NAMES:
        assert run(hook, Action.SYNC, name).outcome == "init_needed"
        assert run(hook, Action.INIT, name).outcome == "initialized"
    emulator.advance(changes=5)
    for name in ODD_NAMES:
        assert run(hook, Action.SYNC, name).outcome == "synced"
        assert run(hook, Action.INIT, name, reinit=True).outcome == "initialized"
    assert run(hook, Action.SYNC, "accounts").outcome == "synced"
    for name in (*ODD_NAMES, "accounts"):
        assert in_step(emulator, database_url, name), name
    assert query(db, "SELECT count(*) FROM instructure_dap.table_sync") == [(len(ODD_NAMES) + 1,)]


def test_an_overlapping_run_on_a_table_being_initialized_is_busy(hook, emulator, db, database_url):
    emulator.inject_fault("slow_job", table="courses", polls=2)
    with in_background(
        lambda: run(hook, Action.INIT, "courses", holder="cd2_replica scheduled__first")
    ) as outcome:
        wait_for(lambda: stages(db), what="the first run's stage")
        busy = DapHook().run_table_job(
            TableJob(
                action=Action.SYNC,
                namespace=NS,
                table="courses",
                lock_wait_seconds=1,
                api_limit_window_seconds=PACER_WINDOW_SECONDS,
            )
        )
    assert outcome["result"].outcome == "initialized"
    assert busy.outcome == "busy" and busy.error is None
    assert "worked on by cd2_replica scheduled__first since" in busy.reason
    assert run(hook, Action.SYNC, "courses").outcome == "synced"
    assert in_step(emulator, database_url, "courses")


def test_drops_never_reach_other_tables(hook, emulator, db, database_url):
    # A re-init of "x,accounts" and of "all" once dropped canvas.accounts and every table.
    run(hook, Action.INIT, "accounts")
    run(hook, Action.INIT, "x,accounts")
    run(hook, Action.INIT, "all")
    before = replica_truth(database_url, NS, "accounts")
    run(hook, Action.INIT, "x,accounts", reinit=True)
    run(hook, Action.INIT, "all", reinit=True)
    assert replica_truth(database_url, NS, "accounts") == before
    assert in_step(emulator, database_url, "accounts")
    assert not [p for p in PLUGINS.rglob("*.py") if "SQLDrop" in p.read_text()]


# Holds every swap's first move (``ALTER ... SET SCHEMA``) inside its transaction until the test's session
# lets go of advisory lock SWAP_GATE: a swap then sits with its earlier statements uncommitted.
SWAP_GATE = 0x47415445
SWAP_TRY_SECONDS = 2  # cd2.dap_child.staging.SWAP_TRY_LOCK_TIMEOUT_MS (the DAP venv's module)
GATE_SWAPS = f"""
CREATE FUNCTION gate_swaps() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_query() ILIKE '%SET SCHEMA%' THEN PERFORM pg_advisory_xact_lock_shared({SWAP_GATE}); END IF;
END $$;
CREATE EVENT TRIGGER gate_swaps ON ddl_command_start EXECUTE FUNCTION gate_swaps();
"""


def open_gate(db) -> None:
    query(db, "SELECT pg_advisory_unlock_all()")


def swaps_waiting(db) -> int:
    """Sessions waiting on a lock in a swap's move (held at the gate) or in a shared ``CREATE ... IF NOT
    EXISTS`` (behind another session's uncommitted creation)."""
    (count,) = query(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND (query ILIKE '%SET SCHEMA%' OR query ILIKE '%IF NOT EXISTS%')",
    )[0]
    return count


def test_two_swaps_into_one_schema_at_once_both_succeed(hook, emulator, db, database_url):
    # Two first inits swapping into a canvas schema that does not exist yet, then two re-inits saving views
    # into a saved_views table that does not exist yet: each CREATE ... IF NOT EXISTS once failed the second
    # child on the catalog's unique index while the first had not committed its creation.
    query(db, GATE_SWAPS)
    tables = ("courses", "accounts")
    for reinit in (False, True):
        if reinit:
            for table in tables:
                query(db, f"CREATE VIEW public.v_{table} AS SELECT count(*) AS n FROM canvas.{table}")
        query(db, "SELECT pg_advisory_lock(%s)", SWAP_GATE)
        with in_background(partial(run, hook, Action.INIT, tables[0], reinit=reinit)) as first:
            try:
                wait_for(lambda: swaps_waiting(db) == 1, what="the first swap held at the gate")
                with in_background(partial(run, hook, Action.INIT, tables[1], reinit=reinit)) as second:
                    try:
                        wait_for(lambda: swaps_waiting(db) == 2, what="the second swap waiting")
                        # Held longer than a swap's try for the live tables' locks: the moves wait on.
                        time.sleep(SWAP_TRY_SECONDS + 1)
                        assert swaps_waiting(db) == 2
                    finally:
                        open_gate(db)
            finally:
                open_gate(db)  # before the first child's join, if the second never started
        for outcome in (first, second):
            assert "error" not in outcome, outcome["error"]
            assert outcome["result"].outcome == "initialized" and outcome["result"].reinit == reinit
        for table in tables:
            assert in_step(emulator, database_url, table)
    for table in tables:
        assert query(db, f"SELECT n FROM public.v_{table}") == query(
            db, f"SELECT count(*) FROM canvas.{table}"
        )
