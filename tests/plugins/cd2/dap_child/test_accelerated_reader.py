"""The accelerated TSV reader of the DAP child: same lines, same records, same replica, on only when safe.

The client itself runs in the DAP virtualenv, so everything touching it runs there in subprocesses
(``child_checks.py``, ``replicate_driver.py``); the line splitter alone is pure Python and runs here
(``tests/plugins/conftest.py`` puts ``plugins/`` on sys.path).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from cd2.dap_child import accelerated_reader
from local_dap.emulator.builtin import builtin_tables
from tests.plugins.cd2.dap_child import driving
from tests.support.paths import DAP_PYTHON

HERE = Path(__file__).resolve().parent
CHILD_CHECKS = HERE / "child_checks.py"


class AsyncBytes:
    """An async ``read(n)`` over bytes, standing where aiofiles' file object stands."""

    def __init__(self, payload: bytes) -> None:
        self._stream = io.BytesIO(payload)

    async def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def buffered_reader_lines(payload: bytes) -> list[bytes]:
    reader = io.BufferedReader(io.BytesIO(payload))
    lines = [reader.readline() for _ in range(payload.count(b"\n") + 3)]
    return lines


def chunked_reader_lines(payload: bytes, chunk_size: int) -> list[bytes]:
    async def read_all() -> list[bytes]:
        reader = accelerated_reader.ChunkedLineReader(AsyncBytes(payload), chunk_size=chunk_size)
        return [await reader.readline() for _ in range(payload.count(b"\n") + 3)]

    return asyncio.run(read_all())


PAYLOADS = {
    "empty": b"",
    "one line, no newline": b"abc",
    "terminated lines": b"h1\th2\nx\ty\n",
    "unterminated tail": b"h1\th2\nx\ty\nlast\t\\N",
    "blank lines and CR": b"a\r\n\n\nb\rc\n\r\n",
    "escapes and JSON": b'x\\ty\\\\n\\N\t{"a":[1,"\\\\t"]}\n2\t\\\\\n',
    "multi-byte UTF-8": "é\tñ\t漢字\t🙂\n".encode() * 5,
    "line longer than chunks": b"k\t" + b"v" * 5000 + b"\nshort\n",
}


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 4 * 1024 * 1024])
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_chunked_line_reader_returns_what_buffered_readline_returns(payload: bytes, chunk_size: int) -> None:
    assert chunked_reader_lines(payload, chunk_size) == buffered_reader_lines(payload)


def test_chunked_line_reader_honours_a_limit_like_buffered_readline() -> None:
    payload = b"abcdef\ngh\n"

    async def read_with_limits() -> list[bytes]:
        reader = accelerated_reader.ChunkedLineReader(AsyncBytes(payload), chunk_size=4)
        return [
            await reader.readline(4),
            await reader.readline(0),
            await reader.readline(),
            await reader.readline(9),
        ]

    expected = io.BufferedReader(io.BytesIO(payload))
    assert asyncio.run(read_with_limits()) == [
        expected.readline(4),
        expected.readline(0),
        expected.readline(),
        expected.readline(9),
    ]


def run_child_checks(*args: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [str(DAP_PYTHON), str(CHILD_CHECKS), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_install_patches_the_init_and_sync_readers_once() -> None:
    outcome = run_child_checks("install", env={"CD2_ACCELERATED_READER": "1"})
    assert outcome["first"] is True and outcome["second"] is True
    assert outcome["init_reader"] == outcome["sync_reader"] == "AcceleratedTextReader"
    assert outcome["accelerated_is_subclass"] is True
    assert outcome["pysqlsync_reader"] == "AsyncTextReader", "only the client's two modules are patched"
    assert outcome["warnings"] == []


@pytest.mark.parametrize("setting", ["0", "false", "OFF"])
def test_the_setting_turns_it_off(setting: str) -> None:
    outcome = run_child_checks("install", env={"CD2_ACCELERATED_READER": setting})
    assert outcome["first"] is False and outcome["second"] is False
    assert outcome["init_reader"] == outcome["sync_reader"] == "AsyncTextReader"
    assert outcome["warnings"] == []


def test_an_unverified_client_version_logs_one_warning_and_keeps_the_stock_reader() -> None:
    outcome = run_child_checks("install", "UNVERIFIED", env={"CD2_ACCELERATED_READER": "1"})
    assert outcome["first"] is False and outcome["second"] is False
    assert outcome["init_reader"] == outcome["sync_reader"] == "AsyncTextReader"
    assert len(outcome["warnings"]) == 2, "one warning per install() call"
    assert "2.3.1 is not a verified version" in outcome["warnings"][0]


def test_accelerated_reader_yields_the_clients_own_records(tmp_path: Path) -> None:
    header = "datetime.meta_ts\tint.id\tstr.name\tfloat.score\tbool.active\tjson.settings"
    lines = [header]
    for i in range(3000):
        lines.append(
            "\t".join(
                [
                    f"2024-02-{1 + i % 28:02d}T10:11:12.{i:06d}Z",
                    str(i),
                    "x" * 70_000
                    if i % 1000 == 999
                    else [r"\N", r"tab\there", r"nl\nand\\back", "漢字 🙂"][i % 4],
                    r"\N" if i % 7 == 0 else f"{i / 3:.17g}",
                    ["true", "false", r"\N"][i % 3],
                    r"\N" if i % 5 == 0 else json.dumps({"i": i, "tags": ["a", "b\\t"], "n": None}),
                ]
            )
        )
    tsv = tmp_path / "part-00000.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")

    chunk_sizes = ("97", "4096", str(4 * 1024 * 1024))
    runs = run_child_checks("records", str(tsv), *chunk_sizes)
    assert len(runs["stock"]) == 3000
    for size in chunk_sizes:
        assert runs[size] == runs["stock"], f"chunk size {size}"


# -- the replica, end to end: the client with and without the accelerator against the emulator ---------

BUILTIN_TABLES = [(t.namespace, t.name) for t in builtin_tables()]
APPEND_ONLY_TABLES = {(t.namespace, t.name) for t in builtin_tables() if t.append_only}
MODES = {"stock": "0", "accelerated": "1"}


def run_driver(emulator, database_url: str, operation: str, namespace: str, table: str, mode: str) -> dict:
    return driving.run_driver(
        emulator,
        database_url,
        operation,
        namespace,
        table,
        CD2_ACCELERATED_READER=MODES[mode],
        CD2_BULK_UPSERT=MODES[mode],
    )


def table_sync_rows(postgres_server, database_url: str) -> list[tuple]:
    conn = postgres_server.connect(database_url.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT source_namespace, source_table, timestamp, schema_version, target_schema, target_table "
                "FROM instructure_dap.table_sync ORDER BY 1, 2"
            )
            return cur.fetchall()
    finally:
        conn.close()


def value_shapes(postgres_server, database_url: str) -> dict[str, int]:
    """How many replicated values have each awkward shape, over every column of every data table."""
    shapes = {
        "NULL": 0,
        "oversized marker": 0,
        "tab, newline or backslash": 0,
        "jsonb": 0,
        "array": 0,
        "enum": 0,
    }
    conn = postgres_server.connect(database_url.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema IN ('canvas', 'canvas_logs', 'catalog')"
            )
            for schema, table, column, data_type in cur.fetchall():
                value = f'"{column}"'
                cur.execute(
                    f"SELECT count(*) FILTER (WHERE {value} IS NULL), "
                    f"count(*) FILTER (WHERE strpos({value}::text, '__dap_oversized_truncated__') > 0), "
                    f"count(*) FILTER (WHERE {value}::text ~ '[\\t\\n\\\\]'), count({value}) "
                    f'FROM "{schema}"."{table}"'
                )
                nulls, oversized, escaped, present = cur.fetchone()
                shapes["NULL"] += nulls
                shapes["oversized marker"] += oversized
                shapes["tab, newline or backslash"] += escaped
                kind = {"jsonb": "jsonb", "ARRAY": "array", "USER-DEFINED": "enum"}.get(data_type)
                if kind:
                    shapes[kind] += present
    finally:
        conn.close()
    return shapes


@pytest.fixture(scope="module")
def replicas(postgres_server):
    """Every built-in table replicated twice, stock and accelerated: after init, then after one sync.

    Returns ``{(operation, namespace, table): {mode: (driver result, replica truth)}}``, the changes the
    emulator made between init and sync, each replica's ``table_sync`` rows, and the value shapes in the
    accelerated replica after init.
    """
    from concurrent.futures import ThreadPoolExecutor

    from local_dap.control import start_emulator
    from local_dap.truth import replica_truth

    urls = {mode: postgres_server.create_database(f"accelerated_reader_{mode}") for mode in MODES}
    outcomes: dict[tuple, dict] = {}

    def replicate_all(operation: str, mode: str) -> None:
        # One table at a time per database, as our DAG's child processes run.
        for namespace, table in BUILTIN_TABLES:
            result = run_driver(emulator, urls[mode], operation, namespace, table, mode)
            truth = replica_truth(urls[mode], namespace, table)
            outcomes.setdefault((operation, namespace, table), {})[mode] = (result, truth)

    # Several part files per table, so file boundaries are crossed too.
    with start_emulator(seed=6, rows=400, part_rows=150) as emulator, ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(replicate_all, "init", mode) for mode in MODES]:
            future.result()
        shapes = value_shapes(postgres_server, urls["accelerated"])
        changes = emulator.advance(changes=150)["changes"]
        for future in [pool.submit(replicate_all, "sync", mode) for mode in MODES]:
            future.result()
    metadata = {mode: table_sync_rows(postgres_server, url) for mode, url in urls.items()}
    return outcomes, changes, metadata, shapes


@pytest.mark.parametrize("operation", ["init", "sync"])
@pytest.mark.parametrize(("namespace", "table"), BUILTIN_TABLES, ids=[t for _, t in BUILTIN_TABLES])
def test_replica_with_the_accelerator_equals_the_stock_one(replicas, operation, namespace, table) -> None:
    outcomes, _, _, _ = replicas
    (stock, stock_truth), (accelerated, accelerated_truth) = (
        outcomes[(operation, namespace, table)][mode] for mode in ("stock", "accelerated")
    )
    assert (stock["accelerated"], stock["bulk_upsert"], stock["reader"]) == (False, False, "AsyncTextReader")
    assert (accelerated["accelerated"], accelerated["bulk_upsert"], accelerated["reader"]) == (
        True,
        True,
        "AcceleratedTextReader",
    )
    assert stock_truth.count > 0
    assert accelerated_truth == stock_truth, "count and checksum of the replicated table"


@pytest.mark.parametrize(("namespace", "table"), BUILTIN_TABLES, ids=[t for _, t in BUILTIN_TABLES])
def test_the_sync_carried_upserts_and_deletes(replicas, namespace, table) -> None:
    outcomes, changes, _, _ = replicas
    made = changes[f"{namespace}.{table}"]
    assert made["insert"] > 0
    if (namespace, table) not in APPEND_ONLY_TABLES:
        assert made["update"] > 0 and made["delete"] > 0
    _, after_init = outcomes[("init", namespace, table)]["accelerated"]
    _, after_sync = outcomes[("sync", namespace, table)]["accelerated"]
    assert after_sync != after_init, "the sync changed the replica"


def test_both_replicas_record_the_same_watermarks(replicas) -> None:
    _, _, metadata, _ = replicas
    assert len(metadata["stock"]) == len(BUILTIN_TABLES)
    assert metadata["accelerated"] == metadata["stock"]


def test_the_compared_replicas_hold_every_awkward_value_shape(replicas) -> None:
    _, _, _, shapes = replicas
    assert all(count > 0 for count in shapes.values()), shapes
