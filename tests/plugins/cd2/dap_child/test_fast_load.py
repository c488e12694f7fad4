"""The fast loads (:mod:`cd2.dap_child.fast_load`) build the very table the client's own loaders build.

By generation: every table the emulator knows (its built-in tables, every generated shape of
:mod:`local_dap.emulator.shapes` and Instructure's shared schemas) is initialized, then synced after
inserts, updates, soft and hard deletes, by the client as our child runs it (``replicate_driver.py``:
streaming on), once with ``CD2_FAST_INIT=1 CD2_FAST_SYNC=1`` and once with both ``0``, each into its own
database; the fast path in batches of :data:`FAST_BATCH_BYTES`, many per table, a plain init's on two
connections side by side, so that batch boundaries, lookup values met by both connections at once and a
key's rows in several batches all occur. After each step the two tables must have the same columns and
constraints, the same rows to the byte of each value's text (lookup ids, which the client itself assigns
in a random order, compared by their values), the same lookup values, and both equal the emulator's
truth. The emulator's values hold tabs, newlines, backslashes, ``\\N`` as text, quotes, unicode, empty
strings, JSON with nested quotes, arrays, enums, lookups, timestamps with and without fractions and the
oversized placeholder; :func:`test_the_tables_hold_every_awkward_value` checks they really reached the
tables.
"""

from __future__ import annotations

import asyncio
import io
import re

import pytest

from cd2.dap_child import fast_load
from cd2.dap_child.quoting import quote_ident
from local_dap.control import start_emulator
from local_dap.emulator.builtin import builtin_tables
from local_dap.emulator.schema import APPEND_ONLY_NAMESPACES, OVERSIZED
from local_dap.emulator.shapes import SHARED_NAMESPACE, generated_tables, write_schemas
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child import driving
from tests.support.paths import SHARED_DIR

SHARED_SCHEMAS = SHARED_DIR / "cd2" / "schemas"
LABELS = (
    [f"{t.namespace}.{t.name}" for t in builtin_tables()]
    + [f"{t.namespace}.{t.name}" for t in generated_tables()]
    + [
        f"{SHARED_NAMESPACE}.{re.sub(r'\W', '_', p.stem.split('.')[0])}"
        for p in sorted(SHARED_SCHEMAS.glob("*/*.json"))
    ]
)
PATHS = {"fast": "1", "client": "0"}  # CD2_FAST_INIT and CD2_FAST_SYNC
# The fast path's batches this small, so that every table loads in many (an init's on two connections).
FAST_BATCH_BYTES = "4096"
STEPS = ("init", "sync")
UPSERTED_INIT = "canvas_logs.web_logs"  # the client upserts its init (the last row of a key wins)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    schemas = tmp_path_factory.mktemp("schemas")
    assert set(write_schemas(schemas, SHARED_SCHEMAS)) <= set(LABELS)
    with start_emulator(rows=400, schemas=schemas) as running:
        yield running


@pytest.fixture(scope="module")
def databases(postgres_server) -> dict[str, str]:
    return {path: postgres_server.create_database(f"fast_load_{path}") for path in PATHS}


def described(postgres_server, url: str, label: str) -> dict:
    """Columns, constraints, rows (as text, lookup ids as their values) and lookup values of ``label``."""
    namespace, table = label.split(".")
    qualified = f"{quote_ident(namespace)}.{quote_ident(table)}"
    conn = postgres_server.connect(url.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (qualified,),
            )
            columns = cur.fetchall()
            cur.execute(
                "SELECT DISTINCT format_type(atttypid, NULL), t.typtype::text FROM pg_attribute a JOIN pg_type t "
                "ON t.oid = a.atttypid WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (qualified,),
            )
            types = {"enum" if typtype == "e" else name for name, typtype in cur.fetchall()}
            cur.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                "ORDER BY 1",
                (qualified,),
            )
            constraints = cur.fetchall()
            # "enum or free text" columns: an id into <table>__<column>(id, value)
            cur.execute(
                "SELECT a.attname, c.confrelid::regclass::text FROM pg_constraint c JOIN pg_attribute a "
                "ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] WHERE c.conrelid = %s::regclass "
                "AND c.contype = 'f'",
                (qualified,),
            )
            lookups = dict(cur.fetchall())
            values = [
                f"(SELECT l.value FROM {lookups[name]} l WHERE l.id = t.{quote_ident(name)})"
                if name in lookups
                else f"t.{quote_ident(name)}"
                for name, _, _ in columns
            ]
            cur.execute(f"SELECT ROW({', '.join(values)})::text AS r FROM {qualified} t ORDER BY r")
            rows = [r for (r,) in cur.fetchall()]
            lookup_values = {}
            for name, lookup in lookups.items():
                cur.execute(f"SELECT value FROM {lookup} ORDER BY value")
                lookup_values[name] = [v for (v,) in cur.fetchall()]
    finally:
        conn.close()
    return {
        "columns": columns,
        "types": types,
        "constraints": constraints,
        "rows": rows,
        "lookups": lookup_values,
    }


@pytest.fixture(scope="module")
def built(emulator, databases, postgres_server) -> dict[str, dict]:
    """Every table through both steps both ways: per step, label and path, the driver's result, the
    table, and the emulator's truth then."""
    steps = {}
    for step in STEPS:
        if step == "sync":
            made = emulator.advance(
                changes=120, change_mix={"insert": 3, "update": 5, "soft_delete": 1, "delete": 2}
            )
            assert any(counts.get("delete") for counts in made["changes"].values())
        steps[step] = {}
        for label in LABELS:
            namespace, table = label.split(".")
            truth = emulator.truth(namespace, table, everything=namespace in APPEND_ONLY_NAMESPACES)
            steps[step][label] = {}
            for path, switch in PATHS.items():
                result = driving.run_driver(
                    emulator,
                    databases[path],
                    step,
                    namespace,
                    table,
                    CD2_STREAMING="1",
                    CD2_FAST_INIT=switch,
                    CD2_FAST_SYNC=switch,
                    CD2_FAST_LOAD_BATCH_BYTES=FAST_BATCH_BYTES,
                )
                steps[step][label][path] = {
                    "result": result,
                    "equals_truth": replica_truth(databases[path], namespace, table) == truth,
                    **described(postgres_server, databases[path], label),
                }
    return steps


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("step", STEPS)
def test_the_fast_load_builds_the_table_the_clients_loader_builds(step, label, built):
    fast, client = built[step][label]["fast"], built[step][label]["client"]
    patch = f"fast_{step}"
    assert fast["result"]["fast_load"][patch] and not client["result"]["fast_load"][patch]
    assert fast["result"]["fast_load_refused"] == {}, "every shape the emulator knows takes the fast path"
    if step == "init" and label != UPSERTED_INIT:
        (spread,) = fast["result"]["side_by_side"].values()
        assert sorted(spread) == ["1", "2"] and min(spread.values()) >= 1, spread
    else:
        assert fast["result"]["side_by_side"] == {}, "keyed loads keep their batches in order"
    assert fast["columns"] == client["columns"]
    assert fast["constraints"] == client["constraints"]
    assert len(fast["rows"]) == len(client["rows"]) > 0
    assert fast["rows"] == client["rows"]
    assert fast["lookups"] == client["lookups"]
    assert fast["equals_truth"] and client["equals_truth"]


def test_the_tables_hold_every_awkward_value(built):
    """The comparison above met each awkward value, not only the easy ones."""
    rows = "\n".join(r for step in STEPS for label in LABELS for r in built[step][label]["fast"]["rows"])
    expected = {
        "tab": "\t",
        "newline": "\n",
        "backslash": "\\\\",  # doubled in a row's text
        "\\N as text": "\\\\N",
        "quote": '""',
        "unicode": "課程",
        "emoji": "🙂",
        "empty string": '""',
        "JSON with nested quotes": '\\\\""',
        "array": "{",
        "oversized placeholder": OVERSIZED,
        "timestamp with fraction": re.compile(r"\d\d:\d\d:\d\d\.\d{1,6}"),
        "timestamp without fraction": re.compile(r"\d\d:\d\d:\d\d[,)\"]"),
    }
    missing = [
        name
        for name, pattern in expected.items()
        if not (pattern.search(rows) if isinstance(pattern, re.Pattern) else pattern in rows)
    ]
    assert missing == []
    lookups = [
        v for label in LABELS for values in built["sync"][label]["fast"]["lookups"].values() for v in values
    ]
    assert lookups, "lookup values were compared"


def test_every_type_the_fast_init_converts_was_compared(built):
    """A type the fast path takes but no table above has would be taken unseen: add a shape, or drop it."""
    seen = set().union(*(built["init"][label]["fast"]["types"] for label in LABELS))
    assert set(fast_load.SCALARS) <= seen, sorted(seen)
    assert {"jsonb", "enum"} <= seen and any(t.endswith("[]") for t in seen)


def test_an_init_the_database_refuses_more_connections_loads_on_the_clients_own(emulator, postgres_server):
    """A role limited to the client's one connection: the init still loads, batch by batch, on it."""
    database, role, password = "fast_load_one_connection", "cd2_one_connection", "one-connection-pw"
    postgres_server.create_database(database)
    conn = postgres_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s CONNECTION LIMIT 1", (password,))
            cur.execute(f"ALTER DATABASE {database} OWNER TO {role}")
    finally:
        conn.close()
    url = f"postgresql://{role}:{password}@{postgres_server.host}:{postgres_server.port}/{database}"
    namespace, table = "canvas", "accounts"
    result = driving.run_driver(
        emulator,
        url,
        "init",
        namespace,
        table,
        CD2_STREAMING="1",
        CD2_FAST_INIT="1",
        CD2_FAST_LOAD_BATCH_BYTES=FAST_BATCH_BYTES,
    )
    assert result["fast_load"]["fast_init"] and result["side_by_side"] == {}
    assert replica_truth(url, namespace, table) == emulator.truth(namespace, table)


# -- the parts that need no client ------------------------------------------------------------------


def batches_of(payload: bytes, batch_bytes: int, read_bytes: int) -> list[bytes]:
    async def collect() -> list[bytes]:
        batches = fast_load.LineBatches(io.BytesIO(payload), batch_bytes=batch_bytes, read_bytes=read_bytes)
        found = []
        while not batches.done:
            found.append(b"".join([chunk async for chunk in batches.batch()]))
        return found

    return asyncio.run(collect())


@pytest.mark.parametrize("read_bytes", [1, 3, 16, 1 << 20])
@pytest.mark.parametrize("batch_bytes", [1, 10, 25, 1 << 20])
@pytest.mark.parametrize("tail", [b"", b"x\ty"], ids=["terminated", "unterminated"])
def test_line_batches_cut_only_between_lines_and_lose_nothing(read_bytes, batch_bytes, tail):
    payload = b"".join(f"{i}\tvalue {i}\\t\n".encode() for i in range(40)) + tail
    batches = batches_of(payload, batch_bytes, read_bytes)
    assert b"".join(batches) == payload
    for batch in batches[:-1]:
        assert batch.endswith(b"\n")


CATALOG = {"attname": "c", "typtype": "b", "typcategory": "S", "element_name": None, "element_typtype": None}


@pytest.mark.parametrize(
    ("column", "field_type", "why"),
    [
        ({**CATALOG, "type_name": "json"}, dict, "json fed JSON"),
        ({**CATALOG, "type_name": "character varying"}, list, "character varying fed JSON"),
        ({**CATALOG, "type_name": "time without time zone"}, str, "not shown equal"),
        ({**CATALOG, "type_name": "bytea"}, bytes, "not shown equal"),
        ({**CATALOG, "type_name": "timestamp with time zone"}, str, "not shown equal"),
        (
            {**CATALOG, "type_name": "text[]", "typcategory": "A", "element_name": "text"},
            str,
            "not a JSON array",
        ),
        (
            {**CATALOG, "type_name": "interval[]", "typcategory": "A", "element_name": "interval"},
            list,
            "an array of interval",
        ),
    ],
)
def test_a_column_not_loaded_as_the_client_does_is_refused_naming_it(column, field_type, why):
    with pytest.raises(fast_load.Unsupported, match=why) as refused:
        fast_load.conversion("s.c1", column, field_type)
    assert refused.value.column == "c" and str(refused.value).startswith("column c: ")


@pytest.mark.parametrize(
    ("column", "field_type", "expression"),
    [
        ({**CATALOG, "type_name": "text"}, str, "s.c1"),
        ({**CATALOG, "type_name": "character varying"}, str, "s.c1::character varying"),
        ({**CATALOG, "type_name": "jsonb"}, dict, "s.c1::jsonb"),
        ({**CATALOG, "type_name": '"s".e', "typtype": "e"}, str, 's.c1::"s".e'),
    ],
)
def test_a_column_loaded_as_the_client_does_is_cast_by_its_type_input(column, field_type, expression):
    assert fast_load.conversion("s.c1", column, field_type) == expression
