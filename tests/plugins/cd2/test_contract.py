"""The contract between the hook and the child: jobs survive argv, results survive JSON, and any field
one side has and the other lacks is an error, never a silent gap."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cd2.config import Freshness
from cd2.contract import (
    Action,
    ChildError,
    ContractError,
    ErrorCategory,
    ListJob,
    ListResult,
    Outcome,
    PlannedAction,
    TableJob,
    TablePlan,
    TableRef,
    TableResult,
    job_from_argv,
)
from cd2.dag_names import SYNC_TASK_ID
from cd2.hooks.dap import DapPermanentError, DapTransientError, airflow_error, raise_for_try
from cd2.status_page import last_outcome, render_html, table_statuses
from cd2.summary import compose, summarize_table
from tests.support.paths import REPO_ROOT

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RUN = "manual__2026-12-02T10:00:00+00:00"


def test_table_ref_parses_labels():
    assert TableRef.parse("canvas.users") == TableRef("canvas", "users")
    assert TableRef("canvas", "users").label == "canvas.users"
    with pytest.raises(ContractError, match="namespace.table"):
        TableRef.parse("users")


@pytest.mark.parametrize(
    "job",
    [
        ListJob(namespace=("canvas", "catalog")),
        TableJob(action=Action.SYNC, namespace="canvas", table="users"),
        TableJob(
            action=Action.INIT,
            namespace="canvas",
            table='a, b,"all',
            holder="cd2 r",
            reinit=True,
            lock_wait_seconds=2.5,
            api_limits="create_job=7",
            api_limit_window_seconds=30.0,
        ),  # fmt: skip
        TableJob(action=Action.PLAN, namespace="canvas", table="users", reinit=True, retention_hours=1.5),
    ],
)
def test_jobs_round_trip_through_argv(job):
    assert job_from_argv(job.to_argv()) == job


def test_a_table_job_is_sync_init_or_plan():
    with pytest.raises(ContractError, match="sync, init or plan"):
        TableJob(action=Action.LIST, namespace="canvas", table="users")


def test_results_round_trip_through_json():
    failed = TableResult("canvas.users", Outcome.FAILED, error=ChildError(ErrorCategory.TRANSIENT, "X", "m"))
    done = TableResult("canvas.users", Outcome.SYNCED, rows=3, watermark_after="2026-01-01T00:00:00Z")
    planned = TableResult(
        "canvas.users", Outcome.PLANNED, plan=TablePlan(PlannedAction.SYNC, "initialized", 30, 1, 2)
    )
    for result in (failed, done, planned):
        decoded = TableResult.from_json(result.to_json())
        assert decoded == result and isinstance(decoded.outcome, Outcome)
    listed = ListResult(tables={"canvas": ["users"]})
    assert ListResult.from_json(listed.to_json()) == listed
    assert TableResult.from_json(failed.to_json()).error.category is ErrorCategory.TRANSIENT
    assert TableResult.from_json(planned.to_json()).plan.action is PlannedAction.SYNC


def test_a_field_only_one_side_knows_is_an_error():
    record = TableResult("canvas.users", Outcome.SYNCED).to_dict()
    with pytest.raises(ContractError, match=r"unknown field\(s\) \['row_count'\]"):
        TableResult.from_dict(record | {"row_count": 3})
    with pytest.raises(ContractError, match=r"missing field\(s\) \['outcome'\]"):
        TableResult.from_dict({k: v for k, v in record.items() if k != "outcome"})
    with pytest.raises(ContractError, match="ChildError"):
        TableResult.from_dict(record | {"error": {"category": "transient", "type": "X"}})
    with pytest.raises(ContractError):
        TableResult.from_dict(record | {"outcome": "ok"})  # not a status word of the contract
    with pytest.raises(ContractError, match="not JSON"):
        TableResult.from_json(b"{")
    assert json.loads(TableResult("a.b", Outcome.SKIPPED).to_json())["outcome"] == "skipped"


@pytest.mark.parametrize("category", list(ErrorCategory))
def test_every_error_category_has_its_behaviour_and_every_consumer_follows_it(category):
    """A category is defined once, with all of its parts; the retry decision, the operators' exception,
    the notification, the status page and the README's table all take them from there."""
    assert category.retries is None or (type(category.retries) is int and category.retries >= 0)
    assert category.title.strip() and category.action.strip() and category.retried

    error = ChildError(category, "SomeError", "what happened")
    for try_number in range(1, 6):
        retried = category.retries is None or try_number <= category.retries
        assert category.may_retry(try_number) is retried
        # the hook's decision, and the operators' re-raise on this try (both ways round)
        decided = airflow_error(error, try_number)
        assert isinstance(decided, AirflowException) and decided.error == error
        assert isinstance(decided, AirflowFailException) is not retried
        for raised in (DapTransientError(error), DapPermanentError(error)):
            with pytest.raises(AirflowException) as caught:
                raise_for_try(raised, try_number)
            assert isinstance(caught.value, AirflowFailException) is not retried
            assert caught.value.error == error

    label = "canvas.users"
    record = TableResult(label, Outcome.FAILED, error=error)
    note = compose([summarize_table(label, record, None)], dag_id="cd2_replica", run_id="r", now=NOW)
    told = f"- {label}: failed ({category.title}): SomeError: what happened. Action: {category.action}."
    assert told in note.text.splitlines()
    assert note.facts["tables"][0]["error_category"] == category and note.facts["run_failed"]

    last = last_outcome(RUN, 0, {SYNC_TASK_ID: (label, "failed")}, {(RUN, SYNC_TASK_ID, 0): record.to_dict()})
    (row,) = table_statuses({}, {label: last}, Freshness(), NOW)
    assert row.to_json()["outcome_text"] == f"failed ({category.title})"
    assert row.to_json()["action"] == category.action
    page = render_html([row], now=NOW)
    assert f">failed ({html.escape(category.title)})<" in page and html.escape(category.action) in page

    readme = (REPO_ROOT / "README.md").read_text()
    assert f"| `{category}` | {category.retried} | failed ({category.title}) | {category.action} |" in readme
