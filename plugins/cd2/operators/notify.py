"""NotifyRunOperator: one SNS message summarizing every table of the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cd2.config import Freshness, NotifySettings
from cd2.contract import ChildError, ErrorCategory, Outcome, TableResult
from cd2.operators.list_tables import NOTIFY_KEY
from cd2.summary import Notification, TableSummary, compose, first_line, summarize_records, unsummarized

# Task instance states whose table task pushed its record (upstream_failed, removed: it never ran).
RECORDED_STATES = frozenset({"success", "failed", "skipped"})
# The key of notify's record saying SNS did not take the notification (the watcher names it).
DELIVERY_ERROR = "delivery_error"
# SNS error codes that a later try may get past (throttling, SNS's own failures).
SNS_RETRYABLE_CODES = frozenset(
    {"Throttled", "Throttling", "ThrottlingException", "KMSThrottling", "InternalError", "InternalFailure",
     "ServiceUnavailable"}
)  # fmt: skip


class NotifyRunOperator(BaseOperator):
    """Publish the run's summary to ``cd2_config``'s ``sns_topic_arn`` (or log it when there is none).

    Runs after every table finished whatever its state (``trigger_rule="all_done"``). Reads the table
    list, the settings ``list_task_id`` read from the configuration (its XCom ``notify``: topic,
    freshness, plan run, configuration error) and each table task's record (its XCom), which failed and
    skipped tasks push too.

    :param list_task_id: the task that returned the tables.
    :param table_task_ids: the mapped per-table tasks, in order (sync, init).
    :param aws_conn_id: the AWS connection for SNS.
    """

    ui_color = "#f8efe0"

    def __init__(
        self,
        *,
        list_task_id: str,
        table_task_ids: Sequence[str],
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.list_task_id = list_task_id
        self.table_task_ids = table_task_ids
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        settings = self.settings(context)
        topic, problem = settings.sns_topic_arn, settings.problem
        notification = self.compose(context, problem, settings.freshness, plan=settings.plan)
        self.log.info("%s\n%s", notification.subject, notification.log_text)
        if topic:
            self.publish(context, topic, notification)
        elif problem:
            cause = f"no topic is known: {problem}"
            context["ti"].xcom_push(key="return_value", value=notification.facts | {DELIVERY_ERROR: cause})
            raise AirflowFailException(f"Cannot notify: {cause}")
        else:
            self.log.info("No sns_topic_arn in cd2_config: the summary above is only logged")
        return notification.facts

    def settings(self, context: Any) -> NotifySettings:
        """What ``list_task_id`` read from the configuration; when it recorded nothing (its process was
        killed before), no topic and a problem saying so."""
        found = context["ti"].xcom_pull(task_ids=self.list_task_id, key=NOTIFY_KEY, map_indexes=-1)
        try:
            return NotifySettings.from_dict(found)
        except (KeyError, TypeError, ValueError):
            return NotifySettings(problem=f"task {self.list_task_id} recorded no configuration (see its log)")

    def publish(self, context: Any, topic: str, notification: Notification) -> None:
        """Publish to SNS; when SNS refuses, say why in the log and in this task's record (the watcher
        fails the run naming it), and fail: retried when SNS may take it later (throttling, a 5xx)."""
        # Imported here: the Amazon provider (boto3) would cost the DAG file's parse time.
        from airflow.providers.amazon.aws.hooks.sns import SnsHook

        try:
            SnsHook(aws_conn_id=self.aws_conn_id).get_conn().publish(
                TopicArn=topic,
                Subject=notification.subject,
                Message=notification.sns_message(),
                MessageStructure="json",
            )
        except Exception as error:
            cause = publish_error(error)
            self.log.error("SNS did not take the notification above (topic %s): %s", topic, cause)
            context["ti"].xcom_push(key="return_value", value=notification.facts | {DELIVERY_ERROR: cause})
            failure = AirflowException if _may_take_it_later(error) else AirflowFailException
            raise failure(f"SNS did not take the notification: {cause}") from None
        self.log.info("Published the summary to %s", topic)

    def compose(
        self, context: Any, problem: str | None, freshness: Freshness | None = None, *, plan: bool = False
    ) -> Notification:
        ti = context["ti"]
        tables = ti.xcom_pull(task_ids=self.list_task_id, map_indexes=-1)
        if tables is None and problem is None:
            problem = f"task {self.list_task_id} produced no table list (see its log)"
        if tables is not None and not isinstance(tables, list):
            problem = problem or f"task {self.list_task_id} returned {type(tables).__name__}, not a list"
            tables = None
        tables = tables or []
        try:
            states = ti.get_task_states(
                dag_id=self.dag_id, task_ids=self.table_task_ids, run_ids=[context["run_id"]]
            ).get(context["run_id"], {})
        except Exception as error:
            self.log.warning("Could not read the table tasks' states (%s): reading every record", error)
            states = None
        summaries = [self._summarize(ti, states, index, str(label)) for index, label in enumerate(tables)]
        return compose(
            summaries,
            dag_id=self.dag_id,
            run_id=context["run_id"],
            now=datetime.now(UTC),
            problem=problem,
            freshness=freshness,
            plan=plan,
        )

    def _summarize(self, ti: Any, states: Mapping[str, str] | None, index: int, label: str) -> TableSummary:
        try:
            records = [self._record(ti, states, task_id, index, label) for task_id in self.table_task_ids]
        except Exception as error:
            return unsummarized(label, f"its records could not be read: {type(error).__name__}: {error}")
        return summarize_records(label, *records)

    def _record(self, ti: Any, states: Mapping[str, str] | None, task_id: str, index: int, label: str) -> Any:
        """A table task's record; ``None`` when it did not run; a failure when it failed without one
        (the task process was killed before it could write it)."""
        state = None if states is None else states.get(f"{task_id}_{index}")
        # Only the instances that ran have a record: pulling the others logs "XCom not found".
        if states is not None and state not in RECORDED_STATES:
            return None
        record = ti.xcom_pull(task_ids=task_id, map_indexes=index)
        if record is None and state == "failed":
            stopped = ChildError(
                ErrorCategory.UNKNOWN,
                "NoRecord",
                f"{task_id} failed without writing its record (its process was killed, e.g. out of "
                "memory): see its task log",
            )
            return TableResult(label, Outcome.FAILED, error=stopped).to_dict()
        return record


def publish_error(error: BaseException) -> str:
    """SNS's refusal in one line: its error code and message (``NotFound: Topic does not exist``)."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):
        code, message = response["Error"].get("Code"), response["Error"].get("Message")
        text = f"{code}: {message}"
    else:
        text = f"{type(error).__name__}: {error}"
    return first_line(text)[:500] if first_line(text) else type(error).__name__


def _may_take_it_later(error: BaseException) -> bool:
    """Throttling, SNS's own errors and a lost connection pass; a missing topic or a denied key do not."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):
        return response["Error"].get("Code") in SNS_RETRYABLE_CODES
    return isinstance(error, ConnectionError | TimeoutError) or type(error).__name__ in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
    )


def why_the_run_fails(facts: Any) -> str | None:
    """What the watcher fails the run with, from notify's record (``None``: nothing failed)."""
    if not isinstance(facts, Mapping):
        return "notify produced no summary (see its log)"
    failed = "at least one table failed (see notify's log)" if facts.get("run_failed") else None
    if facts.get(DELIVERY_ERROR):
        told = f"; {failed}" if failed else ""
        return f"the notification was not delivered ({facts[DELIVERY_ERROR]}): its text is in notify's task log{told}"
    if failed:
        return "At least one table failed; the notification lists which and why"
    return None
