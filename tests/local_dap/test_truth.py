"""Canonical forms: the emulator's values and what psycopg2 reads back must hash the same."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid

from local_dap.truth import TruthBuilder, canonical, row_digest


def test_values_and_their_replica_forms_canonicalise_alike():
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    pairs = [
        (aware, aware.replace(tzinfo=None)),  # timestamp without time zone
        (aware, aware.astimezone(dt.timezone(dt.timedelta(hours=-5)))),  # timestamptz in another zone
        (decimal.Decimal("12.50"), decimal.Decimal("12.5")),  # numeric(p,s) scale padding
        (decimal.Decimal("-0.00"), decimal.Decimal("0")),
        (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_interface("2001:db8:0:0::1/128").ip),
        (
            uuid.UUID("6f1c7c8e-1d2b-4c3a-9f00-000000000001"),
            uuid.UUID("6F1C7C8E-1D2B-4C3A-9F00-000000000001"),
        ),
        ({"b": 1, "a": aware, "c": None}, {"a": "2026-01-02T03:04:05.000006Z", "b": 1}),  # jsonb drops nulls
    ]
    for emulator_side, replica_side in pairs:
        assert canonical(emulator_side) == canonical(replica_side), (emulator_side, replica_side)


def test_distinct_values_stay_distinct():
    assert canonical(None) is None and canonical("") == ""
    assert canonical(True) != canonical(1)
    assert canonical("NULL") != canonical(None)
    assert canonical(1.5) != canonical(decimal.Decimal("1.6"))


def test_checksum_is_order_independent_but_sees_every_value():
    rows = [{"id": i, "name": f"n{i}"} for i in range(5)]
    forward, backward = TruthBuilder(["id", "name"]), TruthBuilder(["id", "name"])
    for row in rows:
        forward.add(row)
    for row in reversed(rows):
        backward.add(row)
    assert forward.result() == backward.result()
    changed = TruthBuilder(["id", "name"])
    for row in rows[:-1] + [{"id": 4, "name": "other"}]:
        changed.add(row)
    assert changed.result() != forward.result()
    assert row_digest({"a": 1, "b": None}) != row_digest({"a": 1, "b": ""})
