"""A log table's history under real DAG runs: re-inits keep what the API forgot, keep_days bounds it.

The emulator serves ``canvas_logs.web_logs`` as Instructure does: a snapshot holds only the last 30 days.
Its clock moves a day per step here, so a few runs cover weeks.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.dags.replica import FRESH_ENOUGH, Replica

WEB_LOGS = "canvas_logs.web_logs"
CONFIG = {"namespaces": ["canvas_logs"], "include": [WEB_LOGS], "freshness_hours": FRESH_ENOUGH}
DAY = 24 * 3600
SYNC_EVERY_DAYS = 10
LOGGED_DAYS = 40


@pytest.fixture(scope="module")
def emulator():
    with start_emulator(rows=40, step_seconds=DAY) as process:
        yield process


class RowCounter:
    """A reader counting the table's rows in a loop, on its own connection, while the block runs: each
    count with the table's OID, which tells the previous copy from the new one."""

    def __init__(self, url: str) -> None:
        self.url, self.counts = url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)

    def __enter__(self) -> RowCounter:
        self._thread.start()
        while not self.counts:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _count(self) -> None:
        conn = psycopg2.connect(self.url)  # not as a context manager: that opens a transaction
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute(f"SELECT count(*), '{WEB_LOGS}'::regclass::oid FROM {WEB_LOGS}")
                    self.counts.append(cur.fetchone())
                    time.sleep(0.005)
        finally:
            conn.close()


def web_logs_line(note: dict) -> dict:
    (line,) = [t for t in note["facts"]["tables"] if t["table"] == WEB_LOGS]
    return line


def assert_holds_everything_ever_written(replica: Replica) -> None:
    everything = replica.emulator.truth("canvas_logs", "web_logs", everything=True)
    assert replica_truth(replica.url, "canvas_logs", "web_logs") == everything


def test_reinits_of_web_logs_keep_every_row_ever_written_and_readers_never_see_fewer(
    airflow_env, emulator, postgres_server, sns
):
    emulator.reset()
    sns.received()
    forced = Replica(airflow_env, emulator, postgres_server, sns, "log_history_forced")
    assert web_logs_line(forced.run(config=CONFIG)[1])["outcome"] == "initialized"
    for _ in range(LOGGED_DAYS // SYNC_EVERY_DAYS):
        emulator.advance(changes=15, steps=SYNC_EVERY_DAYS)
        line = web_logs_line(forced.run(config=CONFIG)[1])
        assert line["outcome"] == "synced", line
        assert_holds_everything_ever_written(forced)
    # The same 40 days of history, to be re-initialized after an outage longer than the API's 30 days.
    outage = Replica(airflow_env, emulator, postgres_server, sns, "log_history_outage")
    postgres_server.create_database(outage.database, template=forced.database)

    # A day without new rows (they would be in no copy of the outage's replica), but rows age out.
    emulator.advance(changes=0, steps=1)
    served = emulator.truth("canvas_logs", "web_logs")
    everything = emulator.truth("canvas_logs", "web_logs", everything=True)
    assert 0 < served.count < everything.count  # the API has forgotten the first days
    with RowCounter(forced.url) as reader:
        _, note = forced.run(config=CONFIG, conf={"force_reinit": [WEB_LOGS]})
    line = web_logs_line(note)
    assert line["outcome"] == "initialized", line
    assert line["rows_kept"] == everything.count - served.count  # every row older than the API's 30 days
    assert_holds_everything_ever_written(forced)
    assert_never_fewer(reader.counts)

    # No new rows in the outage's first days: rows written between the replica's watermark and the
    # start of the API's retention would be in no copy at all, the API's limit, not the product's.
    emulator.advance(changes=0, steps=30)
    emulator.advance(changes=15, steps=2)
    with RowCounter(outage.url) as reader:
        _, note = outage.run(config=CONFIG)
    line = web_logs_line(note)
    assert line["outcome"] == "initialized" and line["rows_kept"] > 0, line
    assert_holds_everything_ever_written(outage)
    assert_never_fewer(reader.counts)


def assert_never_fewer(counts: list[tuple[int, int]]) -> None:
    """The reader saw the previous copy, then the new one, and never fewer rows."""
    copies = [oid for index, (_, oid) in enumerate(counts) if index == 0 or counts[index - 1][1] != oid]
    assert len(copies) == 2, copies
    rows = [count for count, _ in counts]
    assert all(later >= earlier for earlier, later in itertools.pairwise(rows)), rows


def test_keep_days_prunes_exactly_the_rows_older_than_the_watermark_minus_keep_days(
    airflow_env, emulator, postgres_server, sns
):
    emulator.reset()
    sns.received()
    replica = Replica(airflow_env, emulator, postgres_server, sns, "log_history_keep_days")
    config = CONFIG | {"keep_days": {"canvas_logs.*": 15}}
    assert web_logs_line(replica.run(config=config)[1])["outcome"] == "initialized"
    before = replica_truth(replica.url, "canvas_logs", "web_logs").count
    for _ in range(2):
        added = emulator.advance(changes=20, steps=20)["changes"][WEB_LOGS]["insert"]
        _, note = replica.run(config=config)
        line = web_logs_line(note)
        assert line["outcome"] == "synced", line
        bound = watermark(replica) - timedelta(days=15)
        kept = emulator.truth("canvas_logs", "web_logs", everything=True, since=bound)
        assert replica_truth(replica.url, "canvas_logs", "web_logs") == kept  # count and checksum
        assert line["rows_pruned"] == before + added - kept.count > 0
        before = kept.count


def watermark(replica: Replica) -> datetime:
    with replica.server.connect(replica.database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT timestamp FROM instructure_dap.table_sync WHERE source_namespace = 'canvas_logs' "
            "AND source_table = 'web_logs'"
        )
        (moment,) = cur.fetchone()
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
