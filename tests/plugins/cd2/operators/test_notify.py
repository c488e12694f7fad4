"""How notify tells SNS's refusals apart, and what the watcher makes of notify's record."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from cd2.contract import ErrorCategory
from cd2.operators.notify import (
    DELIVERY_ERROR,
    NotifyRunOperator,
    _may_take_it_later,
    publish_error,
    why_the_run_fails,
)


def refused(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Publish")


@pytest.mark.parametrize(
    ("error", "later"),
    [
        (refused("NotFound", "Topic does not exist"), False),
        (refused("AuthorizationError", "not authorized to perform SNS:Publish"), False),
        (refused("KMSAccessDenied", "The ciphertext refers to a key that does not exist"), False),
        (refused("InvalidParameter", "Message too long"), False),
        (refused("Throttled", "Rate exceeded"), True),
        (refused("KMSThrottling", "Rate exceeded"), True),
        (refused("InternalError", "try again"), True),
        (EndpointConnectionError(endpoint_url="https://sns.us-east-1.amazonaws.com"), True),
    ],
)
def test_a_refusal_is_named_and_retried_only_when_sns_may_take_it_later(error, later):
    assert _may_take_it_later(error) is later
    cause = publish_error(error)
    assert "\n" not in cause and len(cause) <= 500
    if isinstance(error, ClientError):
        assert cause == f"{error.response['Error']['Code']}: {error.response['Error']['Message']}"
    else:
        assert cause.startswith("EndpointConnectionError: ")


def test_the_watcher_fails_the_run_for_a_failed_table_or_an_undelivered_notification():
    assert why_the_run_fails(None) == "notify produced no summary (see its log)"
    assert why_the_run_fails({"run_failed": False}) is None
    assert "At least one table failed" in why_the_run_fails({"run_failed": True})
    undelivered = why_the_run_fails({"run_failed": True, DELIVERY_ERROR: "NotFound: Topic does not exist"})
    assert undelivered.startswith("the notification was not delivered (NotFound: Topic does not exist)")
    assert "at least one table failed" in undelivered
    assert "at least one table" not in why_the_run_fails(
        {"run_failed": False, DELIVERY_ERROR: "Throttled: x"}
    )


class RecordsOf:
    """What notify reads from a task instance: XComs by (task_id, map_index)."""

    def __init__(self, records: dict) -> None:
        self.records = records

    def xcom_pull(self, task_ids: str, map_indexes: int):
        return self.records.get((task_ids, map_indexes))


def test_a_table_task_that_failed_without_its_record_is_a_failure_not_a_skip():
    notify = NotifyRunOperator(task_id="notify", list_task_id="list_tables", table_task_ids=["sync", "init"])
    ti = RecordsOf({("sync", 0): {"label": "canvas.users", "outcome": "init_needed"}})
    states = {"sync_0": "success", "init_0": "failed"}  # init's process was killed: no record
    summary = notify._summarize(ti, states, 0, "canvas.users")
    assert (summary.outcome, summary.error_category) == ("failed", ErrorCategory.UNKNOWN)
    assert summary.error.startswith("NoRecord: init failed without writing its record")
    upstream_failed = notify._summarize(
        ti, {"sync_0": "success", "init_0": "upstream_failed"}, 0, "canvas.users"
    )
    assert upstream_failed.error == "init needed but did not run"
