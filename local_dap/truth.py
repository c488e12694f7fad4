"""The truth of a table: row count and an order-independent checksum over the replicated columns.

Both sides canonicalise to the same text: the emulator from the values it generates, and
:func:`replica_truth` from what psycopg2 reads back out of the PostgreSQL replica, so a test compares
``emulator.truth(ns, t) == replica_truth(conn, ns, t)``.

Canonical forms: NULL is JSON ``null``; booleans ``t``/``f``; integers in decimal; floats by ``repr``;
numerics normalised (``1.50`` -> ``1.5``); timestamps as naive UTC ``YYYY-MM-DDThh:mm:ss.ffffff``; dates
and times ISO; UUIDs lower-case; IP addresses compressed without a prefix length; enums by label; JSON
objects and arrays (jsonb or PostgreSQL arrays) as compact JSON with sorted keys; "enum or free text"
columns, which the client stores as integers into a lookup table, by their text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import uuid
from dataclasses import dataclass, field

from local_dap.emulator.encoding import to_json

_MOD = 1 << 64


@dataclass(frozen=True)
class Truth:
    """Row count and checksum of a table; equal truths mean equal tables (``columns`` is informational)."""

    count: int
    checksum: str
    columns: tuple[str, ...] = field(default=(), compare=False)


def canonical(value: object) -> str | None:
    """One value in canonical text form (``None`` for NULL)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        text = format(value.normalize(), "f")
        return "0" if text in ("-0", "0") else text
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(int(value.total_seconds()))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value.compressed
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(to_json(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, memoryview | bytes):
        return bytes(value).hex()
    return str(value)


def row_digest(row: dict[str, object]) -> int:
    """A 64-bit digest of one row's canonical values, keyed by column name."""
    text = json.dumps(sorted((k, canonical(v)) for k, v in row.items()), ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class TruthBuilder:
    """Accumulates rows into a :class:`Truth` without keeping them."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = tuple(columns)
        self.count = 0
        self.total = 0

    def add(self, row: dict[str, object]) -> None:
        self.count += 1
        self.total = (self.total + row_digest(row)) % _MOD

    def result(self) -> Truth:
        return Truth(self.count, f"{self.total:016x}", self.columns)


def _ident(name: str) -> str:
    """A quoted PostgreSQL identifier, whatever the name holds (quotes, commas, spaces)."""
    return '"' + name.replace('"', '""') + '"'


def _inet(value: object) -> object:
    if value is None:
        return None
    return ipaddress.ip_interface(str(value)).ip


def _json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def replica_truth(conn_or_url, namespace: str, table: str, columns: list[str] | None = None) -> Truth:
    """The :class:`Truth` of the replicated table ``<namespace>.<table>`` in PostgreSQL.

    ``conn_or_url`` is a psycopg2 connection or a ``postgresql://`` URL. ``columns`` restricts the
    comparison (default: every column of the table).
    """
    import psycopg2  # the Airflow/test environment has it; the emulator itself does not need it

    conn = psycopg2.connect(conn_or_url) if isinstance(conn_or_url, str) else conn_or_url
    try:
        with conn.cursor() as cur:
            # udt: the column's type; element_kind: 'e' for arrays of enums (psycopg2 leaves those as text)
            cur.execute(
                "SELECT a.attname, t.typname, COALESCE(et.typtype, '') FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typlen = -1 "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (f"{_ident(namespace)}.{_ident(table)}",),
            )
            described = cur.fetchall()
            if not described:
                raise LookupError(f"no table {namespace}.{table} in the replica")
            if columns is not None:
                described = [d for d in described if d[0] in columns]
            # pysqlsync keeps an "enum or free text" column (oneOf [enum, string]) as an integer into a
            # lookup table <table>__<column>(id, value)
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name LIKE %s",
                (namespace, table.replace("_", "\\_") + "\\_\\_%"),
            )
            lookups = {name for (name,) in cur.fetchall()}
            selects, converters = [], []
            for name, udt, element_kind in described:
                lookup = f"{table}__{name}"
                if lookup in lookups and udt in ("int2", "int4", "int8"):
                    selects.append(
                        f'(SELECT l."value" FROM {_ident(namespace)}.{_ident(lookup)} l WHERE l."id" = t.{_ident(name)})'
                    )
                else:
                    selects.append(
                        f"t.{_ident(name)}::text[]" if element_kind == "e" else f"t.{_ident(name)}"
                    )
                if udt in ("inet", "cidr"):
                    converters.append(_inet)
                elif udt in ("json", "jsonb"):
                    converters.append(_json)
                elif udt in ("_inet", "_cidr"):
                    converters.append(lambda v: None if v is None else [_inet(x) for x in v])
                else:
                    converters.append(None)
            names = [d[0] for d in described]
            select = ", ".join(selects)
            builder = TruthBuilder(names)
            with conn.cursor(name="replica_truth") if conn.autocommit is False else conn.cursor() as rows:
                rows.itersize = 10_000
                rows.execute(f"SELECT {select} FROM {_ident(namespace)}.{_ident(table)} t")
                for record in rows:
                    builder.add(
                        {
                            n: (conv(v) if conv else v)
                            for n, v, conv in zip(names, record, converters, strict=True)
                        }
                    )
            return builder.result()
    finally:
        if isinstance(conn_or_url, str):
            conn.close()
        elif not conn.autocommit:
            conn.rollback()  # never leave the caller's connection idle in a transaction holding locks
