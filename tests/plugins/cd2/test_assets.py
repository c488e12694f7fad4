"""Table assets: the URI follows the postgres provider's convention; only a changed table emits."""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow.providers.postgres.assets.postgres import sanitize_uri

from cd2.assets import asset_extra, changed, table_asset_uri
from cd2.contract import Outcome, TableResult


def test_uri_is_the_postgres_providers_convention():
    uri = table_asset_uri("db.example.edu", None, "cd2", "canvas.users")
    assert uri == "postgres://db.example.edu:5432/cd2/canvas/users"
    assert sanitize_uri(urlsplit(uri)).geturl() == uri  # the provider accepts it unchanged


def test_only_an_init_or_a_sync_that_wrote_rows_changed_the_table():
    assert changed(TableResult("canvas.a", Outcome.INITIALIZED, rows=0))
    assert changed(TableResult("canvas.a", Outcome.SYNCED, rows=3))
    for unchanged in (
        TableResult("canvas.a", Outcome.SYNCED, rows=None),
        TableResult("canvas.a", Outcome.SYNCED, rows=0),
        TableResult("canvas.a", Outcome.INIT_NEEDED),
        TableResult("canvas.a", Outcome.SKIPPED),
        TableResult("canvas.a", Outcome.FAILED),
        TableResult("canvas.a", Outcome.PLANNED, rows=30),  # a plan run changes nothing
    ):
        assert not changed(unchanged)
    result = TableResult(
        "canvas.a", Outcome.SYNCED, rows=3, watermark_after="2026-01-01T00:00:00Z", schema_version=2
    )
    assert asset_extra(result) == {
        "action": "synced",
        "rows": 3,
        "watermark": "2026-01-01T00:00:00Z",
        "schema_version": 2,
    }
