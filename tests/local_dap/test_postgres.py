from urllib.parse import urlsplit

import psycopg2


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
