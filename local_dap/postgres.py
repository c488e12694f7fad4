"""A throwaway PostgreSQL server for tests, or the one named by ``CD2_TEST_DATABASE_URL``.

The server is created with ``initdb`` in a temporary folder, listens on a free loopback port, requires
a password (so tests exercise percent-encoding of awkward passwords) and is stopped at the end. Run as
root, the server runs as the unprivileged ``nobody`` user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg2

from local_dap.processes import free_loopback_port

SUPERUSER = "postgres"
# Characters that break a connection string unless percent-encoded.
SUPERUSER_PASSWORD = "pg-Secret:w/ith@odd%chars#1"


def find_pg_bindir() -> Path:
    """Return the folder holding ``initdb`` and ``pg_ctl``, or raise saying what to install."""
    candidates: list[str] = []
    if os.environ.get("CD2_PG_BINDIR"):
        candidates.append(os.environ["CD2_PG_BINDIR"])
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(result.stdout.strip())
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += sorted(glob.glob("/usr/local/pgsql*/bin")) + ["/opt/homebrew/bin", "/usr/local/bin"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via pg_config --bindir or in "
        "/usr/lib/postgresql/*/bin: install the PostgreSQL server (e.g. apt-get install postgresql) "
        "or set CD2_PG_BINDIR, or point CD2_TEST_DATABASE_URL at a server you run."
    )


@dataclass(frozen=True)
class PostgresServer:
    """Where a test server listens, and how to reach it as its superuser."""

    host: str
    port: int
    user: str
    password: str

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL with the password percent-encoded."""
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        """A psycopg2 connection in autocommit mode."""
        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        """(Re)create an empty UTF-8 database and return its URL."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
        finally:
            conn.close()
        return self.url(name)


def server_from_url(url: str) -> PostgresServer:
    parts = urlsplit(url)
    return PostgresServer(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or SUPERUSER),
        password=unquote(parts.password or ""),
    )


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *command]


@contextmanager
def temporary_server(bindir: Path | None = None) -> Iterator[PostgresServer]:
    """Start a fresh server in a temporary folder; stop it and remove the folder on exit."""
    bindir = bindir or find_pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="cd2-pg-"))
    data = root / "data"
    pwfile = root / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
        shutil.chown(root, "nobody", "nogroup")
        shutil.chown(pwfile, "nobody", "nogroup")
    port = free_loopback_port()
    subprocess.run(
        _as_server_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_server_user(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    server = PostgresServer("127.0.0.1", port, SUPERUSER, SUPERUSER_PASSWORD)
    try:
        _wait_ready(server)
        yield server
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.connect().close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def server_for_tests() -> Iterator[PostgresServer]:
    """The server named by ``CD2_TEST_DATABASE_URL`` if set, else a temporary one."""
    url = os.environ.get("CD2_TEST_DATABASE_URL")
    if url:
        yield server_from_url(url)
    else:
        with temporary_server() as server:
            yield server
