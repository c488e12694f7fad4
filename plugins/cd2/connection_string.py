"""Build the DAP client's ``postgresql://`` connection string from an Airflow connection's parts.

The client accepts only the ``postgresql://`` scheme, needs the password percent-encoded, and takes TLS
only through ``?ssl=`` (``sslmode=`` is silently ignored), so Airflow's ``get_uri()`` cannot be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

SSL_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
# libpq's "allow" has no asyncpg equivalent closer than "prefer".
_SSL_ALIASES = {"allow": "prefer"}


def ssl_mode_from_extra(extra: Mapping[str, Any]) -> str | None:
    """The ``ssl`` mode from a connection's extra (``sslmode`` as Airflow's Postgres connection has it,
    or ``ssl``); ``None`` when unset. Raises ValueError naming the bad value."""
    value = extra.get("sslmode", extra.get("ssl"))
    if value is None or value == "":
        return None
    mode = _SSL_ALIASES.get(str(value), str(value))
    if mode not in SSL_MODES:
        raise ValueError(f"extra sslmode={value!r} is not one of {list(SSL_MODES)} (or 'allow')")
    return mode


def postgres_connection_string(
    *,
    host: str | None,
    port: int | None,
    login: str | None,
    password: str | None,
    database: str | None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """``postgresql://user:password@host:port/database[?ssl=mode]`` with every part percent-encoded."""
    if not host:
        raise ValueError("host is empty; set the PostgreSQL server's host name")
    if not database:
        raise ValueError("schema (the database name) is empty; set it")
    credentials = ""
    if login:
        credentials = quote(login, safe="")
        if password:
            credentials += ":" + quote(password, safe="")
        credentials += "@"
    host_part = f"[{host}]" if ":" in host else host
    url = f"postgresql://{credentials}{host_part}:{port or 5432}/{quote(database, safe='')}"
    mode = ssl_mode_from_extra(extra or {})
    if mode:
        url += f"?ssl={mode}"
    return url
