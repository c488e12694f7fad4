"""Every failure reaches a person: one ``airflow dags test`` run meets every way a table can fail or need
someone, and the one notification it publishes (read back from moto's SQS) names each table with its
category and the action to take, and lists the tables that succeeded. A topic SNS refuses fails the run,
naming the cause, with the notification's text in notify's log."""

from __future__ import annotations

from datetime import timedelta

import psycopg2
import pytest

from cd2.contract import ErrorCategory
from cd2.summary import STALE_ACTION, VIEWS_ACTION
from local_dap.airflow_home import AirflowEnvironment, DagRunResult
from tests.dags.replica import FRESH_ENOUGH, Replica, table_held
from tests.local_dap.emulator.conftest import run_library

SUCCEEDED = "canvas.accounts"
UNKNOWN = "canvas.users"  # the data endpoint answers with a body that is not JSON
PERMANENT = "canvas.courses"  # the schema endpoint says 404
TRANSIENT = "canvas.enrollments"  # every job fails on the server, through every retry
RATE_LIMITED = "canvas.pseudonyms"  # 429 on every data call, longer than the child waits
BUSY = "canvas.submissions"  # another run holds the table
STALE = "canvas.assignments"  # a freshness bound of 1 hour against the emulator's 2026-01-01 data
VIEWS = "canvas.scores"  # a view on the column a schema change drops
TABLES = [SUCCEEDED, UNKNOWN, PERMANENT, TRANSIENT, RATE_LIMITED, BUSY, STALE, VIEWS]
VIEW = "public.v_scores_dropped"


@pytest.fixture(scope="module")
def airflow_env() -> AirflowEnvironment:
    """This module's own Airflow home, where a retry waits one second instead of the DAG's minutes."""
    environment = AirflowEnvironment.create(retry_delay=timedelta(seconds=1))
    yield environment
    environment.remove()


@pytest.fixture(scope="module")
def run(airflow_env, dap_emulator, postgres_server, sns) -> tuple[DagRunResult, dict, Replica]:
    """The one run every path goes through, and its notification."""
    dap_emulator.reset()
    dap_emulator.clear_faults()
    sns.received()
    replica = Replica(airflow_env, dap_emulator, postgres_server, sns, "failure_paths")
    namespace, table = VIEWS.split(".")
    assert run_library(dap_emulator, "init", namespace, table, replica.url)["ok"]
    dropped = dap_emulator.bump_schema(namespace, table, "drop_column")["column"]
    with psycopg2.connect(replica.url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE VIEW {VIEW} AS SELECT id, "{dropped}" FROM {VIEWS}')
    dap_emulator.advance(changes=5, tables=[VIEWS])

    dap_emulator.inject_fault("malformed_json", endpoint="data", table="users", times=None)
    dap_emulator.inject_fault("not_found", endpoint="schema", table="courses", times=None)
    dap_emulator.inject_fault("job_failed", endpoint="data", table="enrollments", times=None)
    dap_emulator.inject_fault("rate_limit", endpoint="data", table="pseudonyms", times=None, retry_after=1)
    config = {
        "include": [label.split(".")[1] for label in TABLES],
        "freshness_hours": {"default": FRESH_ENOUGH, STALE: 1},
        "rate_limited_wait_seconds": 2,
        # A dozen jobs in a minute: the published 5 a minute would pace this run, not test it.
        "api_limits": {"create_job": 100},
    }
    with table_held(replica.url, BUSY, "cd2_replica scheduled__long_init"):
        result, note = replica.run(config=config, env={"AIRFLOW__CD2__LOCK_WAIT_SECONDS": "2"})
    return result, note, replica


def told(run: tuple, table: str, kind: str, action: str) -> None:
    """The notification names ``table`` as ``kind`` with ``action``: in the facts SQS received, and in
    the text (email's), which notify's log holds; the table that succeeded is listed."""
    result, note, _ = run
    items = [item for item in note["facts"]["needs_you"] if item["table"] == table]
    assert items and items[0]["problem"].startswith(kind) and items[0]["action"] == action, items
    assert any(
        line.startswith(f"- {table}: {kind}") and line.endswith(f"Action: {action}.")
        for line in result.output.splitlines()
    ), (table, kind)
    succeeded = next(t for t in note["facts"]["tables"] if t["table"] == SUCCEEDED)
    assert succeeded["outcome"] == "initialized"
    assert f"\n{SUCCEEDED}: initialized in " in result.output


def failed(run: tuple, table: str, category: ErrorCategory, error_type: str) -> None:
    told(run, table, f"failed ({category.title}): {error_type}", category.action)
    line = next(t for t in run[1]["facts"]["tables"] if t["table"] == table)
    assert (line["outcome"], line["error_category"]) == ("failed", category)


def test_the_run_fails_after_one_notification_that_lists_every_table(run):
    result, note, replica = run
    assert result.state == "failed"
    assert result.state_of("notify") == "success"
    assert result.state_of("fail_if_any_table_failed") == "failed"
    assert "at least one table failed" in result.output.lower()
    needing = [UNKNOWN, PERMANENT, TRANSIENT, RATE_LIMITED, STALE, VIEWS]
    assert note["Subject"].startswith(f"cd2_replica: NEEDS YOU ({len(needing)}: ")
    assert [item["table"] for item in note["facts"]["needs_you"]] == sorted(needing)
    assert note["facts"]["counts"] == {"synced": 1, "initialized": 2, "failed": 4, "skipped": 0, "busy": 1}
    assert note["facts"]["run_failed"] is True
    assert {t["table"] for t in note["facts"]["tables"]} == set(TABLES)
    assert note["facts"]["tables_left_out"] == 0
    replica.assert_in_step([SUCCEEDED, STALE, VIEWS])


def test_an_unforeseen_error_is_retried_once_and_told(run):
    failed(run, UNKNOWN, ErrorCategory.UNKNOWN, "JSONDecodeError")
    assert run[0].tries("table.init")[UNKNOWN] == 2


def test_a_rate_limit_spent_by_someone_else_is_told(run):
    failed(run, RATE_LIMITED, ErrorCategory.RATE_LIMITED, "RateLimitExhausted")
    assert run[0].tries("table.init")[RATE_LIMITED] == 4  # the DAG's 3 retries


def test_a_permanent_error_is_not_retried_and_told(run):
    failed(run, PERMANENT, ErrorCategory.PERMANENT, "NotFoundError")
    assert run[0].tries("table.init")[PERMANENT] == 1


def test_a_transient_error_that_outlived_its_retries_is_told(run):
    failed(run, TRANSIENT, ErrorCategory.TRANSIENT, "DAPClientError: Query job ended with status: failed")
    assert run[0].tries("table.init")[TRANSIENT] == 4


def test_a_busy_table_is_listed_but_needs_no_one(run):
    result, note, _ = run
    busy = next(t for t in note["facts"]["tables"] if t["table"] == BUSY)
    assert busy["outcome"] == "busy" and "worked on by cd2_replica scheduled__long_init" in busy["note"]
    assert f"\n{BUSY}: busy in " in result.output
    assert BUSY not in note["Subject"] and BUSY not in {i["table"] for i in note["facts"]["needs_you"]}


def test_a_stale_table_is_told(run):
    told(run, STALE, "stale: data ", STALE_ACTION)


def test_views_needing_a_person_are_told(run):
    told(run, VIEWS, f"views that could not be recreated: {VIEW} ", VIEWS_ACTION)
    assert f"\n{VIEWS}: synced in " in run[0].output


def test_a_topic_sns_refuses_fails_the_run_naming_the_cause_with_the_text_in_the_log(run, sns):
    _, _, replica = run
    replica.emulator.clear_faults()
    missing = sns.topic_arn.rsplit(":", 1)[0] + ":no-such-topic"
    result = replica.airflow.dags_test(
        connections=replica.connections(),
        config={"include": ["accounts"], "sns_topic_arn": missing, "freshness_hours": FRESH_ENOUGH},
        env=sns.env,
    )
    assert result.state == "failed"
    assert (result.state_of("notify"), result.tries("notify")["-1"]) == ("failed", 1)  # not retried
    assert result.state_of("fail_if_any_table_failed") == "failed"
    # moto says "Endpoint does not exist" where SNS says "Topic does not exist"
    assert "the notification was not delivered (NotFound: " in result.output  # the watcher's exception
    assert "cd2_replica: nothing needs you; 1 synced, 0 initialized" in result.output  # notify's log
    assert f"\n{SUCCEEDED}: synced in " in result.output
    assert sns.received() == []
    replica.assert_no_secret(result, [])
