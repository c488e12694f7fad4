"""The emulator's part cache: the bytes it serves are those generated on the fly, for every table state."""

from __future__ import annotations

import gzip

from local_dap.control import start_emulator
from local_dap.paths import SHARED_DIR
from tests.local_dap.emulator.test_protocol import call, login

SNAPSHOT = {"format": "tsv", "mode": "condensed"}


def downloads(emulator, table: str, query: dict) -> list[tuple[bytes, str | None]]:
    """Every object of one job: its raw bytes and its Content-Length header."""
    token = login(emulator)
    _, _, job = call(emulator, "POST", f"/dap/query/canvas/table/{table}/data", query, token)
    _, _, job = call(emulator, "GET", f"/dap/job/{job['id']}", token=token)
    files = []
    for obj in job["objects"]:
        _, _, urls = call(emulator, "POST", "/dap/object/url", [obj], token)
        status, headers, data = call(emulator, "GET", urls["urls"][obj["id"]]["url"])
        assert status == 200 and "Content-Encoding" not in headers
        files.append((data, headers.get("Content-Length")))
    return files


def test_cached_parts_equal_generated_ones_before_and_after_changes() -> None:
    with (
        start_emulator(seed=4, rows=250, part_rows=100) as cached,
        start_emulator(seed=4, rows=250, part_rows=100, cache=False) as generated,
    ):
        seen = []
        for step in range(2):
            first = downloads(cached, "users", SNAPSHOT)
            seen.append(first)
            again = downloads(cached, "users", SNAPSHOT)  # served from the cache
            fresh = downloads(generated, "users", SNAPSHOT)
            assert len(first) == 3
            assert [gzip.decompress(d) for d, _ in first] == [gzip.decompress(d) for d, _ in fresh]
            assert [d for d, _ in again] == [d for d, _ in first]
            assert all(length == str(len(d)) for d, length in again), "a cached part has a Content-Length"
            if step == 0:
                since = {**SNAPSHOT, "since": "2026-01-01T00:00:00Z"}
                for emulator in (cached, generated):
                    emulator.advance(changes=40)
                changes = downloads(cached, "users", since)
                assert [gzip.decompress(d) for d, _ in changes] == [
                    gzip.decompress(d) for d, _ in downloads(generated, "users", since)
                ]
        assert seen[0] != seen[1], "the changes gave new parts, not the cached ones"


def test_tables_with_the_same_schema_get_their_own_parts(tmp_path) -> None:
    schema = (SHARED_DIR / "cd2" / "schemas" / "canvas" / "users.json").read_text()
    (tmp_path / "canvas").mkdir()
    for name in ("twin_a", "twin_b"):
        (tmp_path / "canvas" / f"{name}.json").write_text(schema)
    with (
        start_emulator(seed=4, rows=50, schemas=tmp_path) as cached,
        start_emulator(seed=4, rows=50, schemas=tmp_path, cache=False) as generated,
    ):
        for name in ("twin_a", "twin_b"):
            served = [gzip.decompress(d) for d, _ in downloads(cached, name, SNAPSHOT)]
            assert served == [gzip.decompress(d) for d, _ in downloads(generated, name, SNAPSHOT)], name
