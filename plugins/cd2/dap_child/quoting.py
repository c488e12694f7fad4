"""PostgreSQL identifiers, quoted exactly: every name we put into SQL goes through here."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """``name`` as a quoted identifier (``a"b`` -> ``"a""b"``), whatever it contains."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``, both parts quoted."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


# The role of an ``aclexplode(...) a`` row as GRANT names it.
GRANTEE_SQL = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END"
