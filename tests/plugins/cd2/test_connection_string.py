"""The DAP client's connection string: postgresql:// scheme, percent-encoded parts, TLS as ?ssl=."""

from __future__ import annotations

import psycopg2
import pytest

from cd2.connection_string import postgres_connection_string


def test_awkward_password_connects_to_a_real_server(postgres_server):
    url = postgres_connection_string(
        host=postgres_server.host,
        port=postgres_server.port,
        login=postgres_server.user,
        password=postgres_server.password,
        database="postgres",
        extra={"sslmode": "disable"},
    )
    assert url.startswith("postgresql://") and url.endswith("/postgres?ssl=disable")
    assert postgres_server.password not in url  # it has :/@%# in it: only its encoded form may appear
    conn = psycopg2.connect(url.replace("?ssl=", "?sslmode="))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == postgres_server.user
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("extra", "suffix"),
    [({}, "/db"), ({"sslmode": "require"}, "/db?ssl=require"), ({"sslmode": "allow"}, "/db?ssl=prefer"),
     ({"ssl": "verify-full"}, "/db?ssl=verify-full")],
)  # fmt: skip
def test_tls_mode_comes_from_the_extra(extra, suffix):
    url = postgres_connection_string(host="h", port=None, login="u", password="p", database="db", extra=extra)
    assert url == "postgresql://u:p@h:5432" + suffix


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"host": ""}, "host is empty"), ({"database": None}, "database name"), ({"extra": {"sslmode": "on"}}, "'on'")],
)  # fmt: skip
def test_bad_connection_fields_are_named(fields, named):
    arguments = {"host": "h", "port": 1, "login": "u", "password": "p", "database": "db"} | fields
    with pytest.raises(ValueError, match=named):
        postgres_connection_string(**arguments)
