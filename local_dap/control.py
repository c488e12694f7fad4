"""Start the DAP API emulator in a subprocess and drive it through its admin API.

Usage::

    from local_dap.control import start_emulator
    from local_dap.truth import replica_truth

    with start_emulator(rows=50) as emulator:
        subprocess.run([DAP_BIN / "dap", "initdb", "--namespace", "canvas", "--table", "users",
                        "--connection-string", database_url], env=emulator.client_env(), check=True)
        assert emulator.truth("canvas", "users") == replica_truth(database_url, "canvas", "users")
        emulator.advance(changes=20)
        ...
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from local_dap.paths import DAP_PYTHON, REPO_ROOT, SHARED_DIR
from local_dap.processes import stop
from local_dap.truth import Truth


def _path(name: str) -> str:
    """A table or namespace name as one URL path segment (names may hold spaces, commas, quotes)."""
    return quote(name, safe="")


class EmulatorError(RuntimeError):
    """The admin API refused a request."""


class EmulatorProcess:
    """A running emulator: where it listens, the credentials it accepts, and its admin API."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, process: subprocess.Popen) -> None:
        self.base_url = base_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.process = process

    # -- the client side --------------------------------------------------------------------------
    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for the ``dap`` CLI or library: API URL, credentials (not in argv), no tracking."""
        env = dict(os.environ)
        env.update(
            DAP_API_URL=self.base_url,
            DAP_CLIENT_ID=self.client_id,
            DAP_CLIENT_SECRET=self.client_secret,
            DAP_TRACKING="false",
        )
        env.update(extra)
        return env

    def login(self) -> str:
        """A bearer token for these credentials, as any consumer of the same client id gets one."""
        basic = b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        request = urllib.request.Request(
            f"{self.base_url}/ids/auth/login",
            b"grant_type=client_credentials",
            {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["access_token"]

    def create_job(self, namespace: str, table: str, token: str) -> int:
        """Create a snapshot job as another consumer of the same credentials would; the HTTP status."""
        request = urllib.request.Request(
            f"{self.base_url}/dap/query/{_path(namespace)}/table/{_path(table)}/data",
            json.dumps({"format": "tsv", "mode": "condensed"}).encode(),
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    # -- admin API --------------------------------------------------------------------------------
    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call ``/_emulator/<path>`` and return its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise EmulatorError(f"{method} {path}: {error.code} {error.read().decode()}") from None

    def state(self) -> dict:
        """Clock, settings and per-table schema version, row ids and change count."""
        return self.admin("GET", "state")

    def advance(
        self,
        changes: int = 10,
        steps: int = 1,
        tables: list[str] | None = None,
        change_mix: dict[str, float] | None = None,
    ) -> dict:
        """Move the logical clock ``steps`` times, making ``changes`` changes per table per step.

        Changes are inserts, updates, soft deletes (``workflow_state = 'deleted'``) and hard deletes
        (append-only tables such as ``web_logs`` only get inserts), in the shares of ``change_mix``
        (kind to share, e.g. ``{"update": 10, "delete": 1}``; default the emulator's
        ``DEFAULT_CHANGE_MIX``). ``tables`` limits them to some tables (``"canvas.users"`` or
        ``"users"``). Returns the new clock and the counts per kind.
        """
        spec = {"changes": changes, "steps": steps, "tables": tables, "change_mix": change_mix}
        return self.admin("POST", "advance", spec)

    def truth(
        self, namespace: str, table: str, *, everything: bool = False, since: dt.datetime | None = None
    ) -> Truth:
        """Row count and checksum of the table now, as the API serves it; compare with
        ``truth.replica_truth``. ``everything``: every row ever written, with those an append-only table's
        retention has dropped from the API (what a replica that synced all along holds); ``since``: only
        rows written at or after it (an append-only table's ``timestamp``)."""
        options = {"everything": "1"} if everything else {}
        if since is not None:
            options["since"] = since.isoformat()
        query = f"?{urllib.parse.urlencode(options)}" if options else ""
        answer = self.admin("GET", f"truth/{_path(namespace)}/{_path(table)}{query}")
        return Truth(answer["count"], answer["checksum"], tuple(answer["columns"]))

    def truth_rows(self, namespace: str, table: str) -> list[dict]:
        """The rows of a (small) table now, as JSON values (at most 10,000)."""
        return self.admin("GET", f"truth/{_path(namespace)}/{_path(table)}?rows=1")["rows"]

    def inject_fault(self, kind: str, endpoint: str | None = None, **options) -> dict:
        """Add a fault rule. ``kind`` is one of ``faults.KINDS``; ``endpoint`` one of ``login``, ``list``,
        ``schema``, ``data``, ``job``, ``url``, ``download`` or ``*``. Options: ``namespace``, ``table``,
        ``times`` (default 1; None = unlimited), ``probability``, ``status`` (server_error),
        ``retry_after`` (rate_limit; None sends no header), ``polls`` (slow_job), ``line_boundary``
        (truncated_gzip: cut after a whole line)."""
        return self.admin("POST", "faults", {"kind": kind, "endpoint": endpoint, **options})

    def faults(self) -> list[dict]:
        """The fault rules and how often each fired."""
        return self.admin("GET", "faults")["faults"]

    def clear_faults(self) -> None:
        self.admin("DELETE", "faults")

    def bump_schema(
        self, namespace: str, table: str, change: str, column: str | None = None, value: str | None = None
    ) -> dict:
        """New schema version: ``add_column``, ``drop_column``, ``add_enum_value``, ``change_type``
        (int32->int64, float32->float64, varchar(n)->text), ``nullable`` (a required column becomes
        optional) or ``add_lookup_column`` (an "enum or free text" column, which the client keeps in a
        lookup table). Returns the version and what changed."""
        return self.admin(
            "POST",
            f"schema/{_path(namespace)}/{_path(table)}",
            {"change": change, "column": column, "value": value},
        )

    def configure(self, **settings) -> dict:
        """Change settings at run time: ``job_polls``, ``part_rows``, ``retention_hours={"ns.t": h}``,
        ``rate_limits`` (True, False or {endpoint: per_minute}), ``time_scale``."""
        return self.admin("POST", "config", settings)

    def reset(self, seed: int | None = None, rows: int | None = None) -> dict:
        """Back to the start: clock, data, jobs, faults and request log (optionally a new seed/rows)."""
        return self.admin("POST", "reset", {"seed": seed, "rows": rows})

    def requests(self) -> list[dict]:
        """Every API request so far: method, path, endpoint, table, status, fault, JSON body answered."""
        return self.admin("GET", "requests")["requests"]

    def clear_requests(self) -> None:
        self.admin("DELETE", "requests")


def write_extra_tables(count: int, directory: Path) -> list[str]:
    """``count`` more canvas tables for ``start_emulator(schemas=directory)``: the shared accounts
    schema under names of real CD2 tables (``../shared/cd2/tables.txt``) the built-in ones do not use."""
    from local_dap.emulator.builtin import builtin_tables

    shared = SHARED_DIR / "cd2"
    template = (shared / "schemas" / "canvas" / "accounts.json").read_text()
    taken = {table.name for table in builtin_tables() if table.namespace == "canvas"}
    lines = (shared / "tables.txt").read_text().splitlines()
    real = [line.strip().split(".", 1)[1] for line in lines if line.startswith("canvas.")]
    names = [name for name in dict.fromkeys(real) if name not in taken]
    names += [f"generated_{index}" for index in range(max(0, count - len(names)))]
    (directory / "canvas").mkdir(parents=True, exist_ok=True)
    for name in names[:count]:
        (directory / "canvas" / f"{name}.json").write_text(template)
    return [f"canvas.{name}" for name in names[:count]]


@contextmanager
def start_emulator(
    *,
    seed: int = 0,
    rows: int = 30,
    schemas: Path | None = None,
    part_rows: int | None = None,
    job_polls: int = 0,
    rate_limits: bool = False,
    time_scale: float = 1.0,
    step_seconds: int | None = None,
    cache: bool = True,
    python: Path = DAP_PYTHON,
) -> Iterator[EmulatorProcess]:
    """Run ``python -m local_dap.emulator`` on a free loopback port with fresh random credentials."""
    client_id = f"us-east-1#emulator-{secrets.token_hex(4)}"
    client_secret = secrets.token_urlsafe(24)
    args = [str(python), "-m", "local_dap.emulator", "--host", "127.0.0.1", "--port", "0",
            "--seed", str(seed), "--rows", str(rows), "--job-polls", str(job_polls),
            "--time-scale", str(time_scale)]  # fmt: skip
    if schemas is not None:
        args += ["--schemas", str(schemas)]
    if part_rows is not None:
        args += ["--part-rows", str(part_rows)]
    if step_seconds is not None:
        args += ["--step-seconds", str(step_seconds)]
    if rate_limits:
        args.append("--rate-limits")
    if not cache:
        args.append("--no-cache")
    env = dict(os.environ, DAP_EMULATOR_CLIENT_ID=client_id, DAP_EMULATOR_CLIENT_SECRET=client_secret)
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"emulator did not start (exit {process.wait(timeout=10)})")
        yield EmulatorProcess(base_url, client_id, client_secret, process)
    finally:
        stop(process)
