"""Each injectable fault, and what the real client (``SQLReplicator.synchronize``) does with it.

The cases share one emulator and one replica of ``canvas.users``: every case advances the clock, injects
its fault and synchronises. A failed sync leaves the watermark alone, so the next case's sync repairs it;
a later test checks the replica converged to the truth; then a gzip cut on a line boundary shows
silent data loss that only a fresh snapshot repairs.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.local_dap.emulator.conftest import run_dap, run_library

NS, TABLE = "canvas", "users"

# (fault, error type the library raises or None for success, (endpoint, status) answers in order)
CASES = [
    pytest.param(
        dict(kind="server_error", endpoint="schema", times=2),
        None,
        [("schema", 500), ("schema", 500), ("schema", 200)],
        id="5xx-retried-then-ok",
    ),
    pytest.param(
        dict(kind="server_error", endpoint="data", times=3, status=503),
        "ProcessingError",
        [("data", 503)] * 3,
        id="5xx-three-times-gives-up",
    ),
    pytest.param(
        dict(kind="server_error", endpoint="download"),
        None,
        [("download", 500), ("download", 200)],
        id="download-5xx-retried",
    ),
    pytest.param(
        dict(kind="server_error", endpoint="login"),
        "ProcessingError",
        [("login", 500)],
        id="login-is-not-retried",
    ),
    pytest.param(
        dict(kind="rate_limit", endpoint="data", retry_after=1),
        None,
        [("data", 429), ("data", 200)],
        id="429-waits-retry-after",
    ),
    pytest.param(
        dict(kind="unauthorized", endpoint="schema"), "AuthenticationError", [("schema", 401)], id="401"
    ),
    pytest.param(
        dict(kind="account_disabled", endpoint="data"),
        "AccountDisabledError",
        [("data", 403)],
        id="403-account-disabled",
    ),
    pytest.param(dict(kind="not_found", endpoint="schema"), "NotFoundError", [("schema", 404)], id="404"),
    pytest.param(
        dict(kind="out_of_range", endpoint="data"), "OutOfRangeError", [("data", 400)], id="out-of-range"
    ),
    pytest.param(
        dict(kind="job_failed", endpoint="data"), "DAPClientError", [("data", 200)], id="job-failed"
    ),
    pytest.param(
        dict(kind="broken_download", endpoint="download"),
        "ClientPayloadError",
        [("download", 200)],
        id="download-breaks-mid-stream",
    ),
    pytest.param(
        dict(kind="truncated_gzip", endpoint="download"),
        "ValueError",
        [("download", 200)],
        id="truncated-gzip",
    ),
    pytest.param(
        dict(kind="malformed_json", endpoint="job"), "JSONDecodeError", [("job", 200)], id="malformed-json"
    ),
]


@pytest.fixture(scope="module")
def replica(postgres_server):
    """One emulator and one initialised replica of canvas.users for all cases."""
    with start_emulator(rows=60) as emulator:
        url = postgres_server.create_database("faults_users")
        assert run_library(emulator, "init", NS, TABLE, url)["ok"]
        yield emulator, url


@pytest.mark.parametrize(("fault", "error_type", "answers"), CASES)
def test_fault(replica, fault, error_type, answers):
    emulator, url = replica
    emulator.advance(changes=25, tables=[f"{NS}.{TABLE}"])
    emulator.clear_requests()
    emulator.inject_fault(**fault)
    try:
        result = run_library(emulator, "sync", NS, TABLE, url)
    finally:
        emulator.clear_faults()
    seen = [(r["endpoint"], r["status"]) for r in emulator.requests()]
    endpoint = fault["endpoint"]
    assert [a for a in seen if a[0] == endpoint] == answers
    if error_type is None:
        assert result == {"ok": True}
        assert replica_truth(url, NS, TABLE) == emulator.truth(NS, TABLE)
    else:
        assert result["ok"] is False and result["error_type"] == error_type, result
        assert replica_truth(url, NS, TABLE) != emulator.truth(NS, TABLE)


def test_429_retry_waits_the_retry_after_seconds(replica):
    emulator, url = replica
    emulator.clear_requests()
    emulator.inject_fault("rate_limit", "schema", retry_after=2)
    assert run_library(emulator, "sync", NS, TABLE, url)["ok"]
    schema_calls = [r for r in emulator.requests() if r["endpoint"] == "schema"]
    assert [r["status"] for r in schema_calls] == [429, 200]
    assert schema_calls[1]["time"] - schema_calls[0]["time"] >= 1.9


def test_replica_converges_after_the_faults(replica):
    emulator, url = replica
    assert run_library(emulator, "sync", NS, TABLE, url) == {"ok": True}
    assert replica_truth(url, NS, TABLE) == emulator.truth(NS, TABLE)


def test_gzip_cut_after_a_whole_line_loads_silently_short(replica):
    """The client never checks that the gzip stream ended: a cut on a line boundary loses rows quietly."""
    emulator, url = replica
    emulator.advance(changes=40, tables=[f"{NS}.{TABLE}"])
    emulator.inject_fault("truncated_gzip", "download", line_boundary=True)
    assert run_library(emulator, "sync", NS, TABLE, url) == {"ok": True}
    assert replica_truth(url, NS, TABLE) != emulator.truth(NS, TABLE)
    # the watermark moved on, so the lost changes are not fetched again by the next sync
    assert run_library(emulator, "sync", NS, TABLE, url) == {"ok": True}
    assert replica_truth(url, NS, TABLE) != emulator.truth(NS, TABLE)


def test_replica_converges_after_a_fresh_snapshot(replica):
    emulator, url = replica
    assert run_library(emulator, "drop", NS, TABLE, url) == {"ok": True}
    assert run_library(emulator, "init", NS, TABLE, url) == {"ok": True}
    assert replica_truth(url, NS, TABLE) == emulator.truth(NS, TABLE)


def test_cli_exit_code_and_message_for_an_unknown_table(emulator, database_url):
    started = time.monotonic()
    outcome = run_dap(emulator, "initdb", "--namespace", NS, "--table", "no_such_table",
                      "--connection-string", database_url)  # fmt: skip
    assert outcome.returncode == 5
    assert "not found" in outcome.output.lower()
    assert time.monotonic() - started < 60


def test_retention_gives_out_of_range_then_a_fresh_snapshot_works(emulator, postgres_server):
    url = postgres_server.create_database("faults_retention")
    assert run_library(emulator, "init", "canvas_logs", "web_logs", url)["ok"]
    emulator.configure(retention_hours={"canvas_logs.web_logs": 1})
    emulator.advance(changes=5, steps=2)
    result = run_library(emulator, "sync", "canvas_logs", "web_logs", url)
    assert result["error_type"] == "OutOfRangeError"
    answer = [r for r in emulator.requests() if r["endpoint"] == "data"][-1]
    assert answer["status"] == 400 and answer["body"]["error"]["type"] == "OutOfRangeError"
    assert run_library(emulator, "drop", "canvas_logs", "web_logs", url)["ok"]
    assert run_library(emulator, "init", "canvas_logs", "web_logs", url)["ok"]
    served = emulator.truth("canvas_logs", "web_logs")
    assert replica_truth(url, "canvas_logs", "web_logs") == served
    # The snapshot held exactly the retention's rows: those written in the last hour, of more ever written.
    now = dt.datetime.fromisoformat(emulator.state()["now"])
    last_hour = emulator.truth("canvas_logs", "web_logs", everything=True, since=now - dt.timedelta(hours=1))
    assert last_hour == served
    assert 0 < served.count < emulator.truth("canvas_logs", "web_logs", everything=True).count
