"""NotifyRunOperator: one SNS message summarizing every table of the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cd2.config import ConfigError, Freshness, parse_config, parse_flag_param
from cd2.contract import TableResult
from cd2.summary import Notification, compose, summarize_table

# Task instance states whose table task pushed its record (upstream_failed, removed: it never ran).
RECORDED_STATES = frozenset({"success", "failed", "skipped"})


class NotifyRunOperator(BaseOperator):
    """Publish the run's summary to ``sns_topic_arn`` from ``cd2_config`` (or log it when there is none).

    Runs after every table finished whatever its state (``trigger_rule="all_done"``). Reads the table
    list and each table task's record (its XCom), which failed and skipped tasks push too.

    :param config: the ``cd2_config`` Variable's value.
    :param list_task_id: the task that returned the tables.
    :param table_task_ids: the mapped per-table tasks, in order (sync, init).
    :param plan: the run is a plan run (the message says so and lists what a run would do).
    :param aws_conn_id: the AWS connection for SNS.
    """

    template_fields: Sequence[str] = ("config", "plan")
    ui_color = "#f8efe0"

    def __init__(
        self,
        *,
        config: str | Mapping[str, Any] | None = None,
        list_task_id: str,
        table_task_ids: Sequence[str],
        plan: bool | str = False,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.list_task_id = list_task_id
        self.table_task_ids = table_task_ids
        self.plan = plan
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            config = parse_config(self.config)
            topic, freshness, problem = config.sns_topic_arn, config.freshness, None
        except ConfigError as error:
            topic, freshness, problem = None, None, str(error)
        try:
            plan = parse_flag_param(self.plan, "plan")
        except ConfigError as error:
            plan, problem = False, problem or str(error)
        notification = self.compose(context, problem, freshness, plan=plan)
        self.log.info("%s\n%s", notification.subject, notification.text)
        if topic:
            # Imported here: the Amazon provider (boto3) would cost the DAG file's parse time.
            from airflow.providers.amazon.aws.hooks.sns import SnsHook

            SnsHook(aws_conn_id=self.aws_conn_id).get_conn().publish(
                TopicArn=topic,
                Subject=notification.subject,
                Message=notification.sns_message(),
                MessageStructure="json",
            )
            self.log.info("Published the summary to %s", topic)
        elif problem:
            raise AirflowFailException(f"Cannot notify: {problem}")
        else:
            self.log.info("No sns_topic_arn in cd2_config: the summary above is only logged")
        return notification.facts

    def compose(
        self, context: Any, problem: str | None, freshness: Freshness | None = None, *, plan: bool = False
    ) -> Notification:
        ti = context["ti"]
        tables = ti.xcom_pull(task_ids=self.list_task_id, map_indexes=-1)
        if tables is None and problem is None:
            problem = f"task {self.list_task_id} produced no table list (see its log)"
        tables = tables or []
        indexes = list(range(len(tables)))
        states = ti.get_task_states(
            dag_id=self.dag_id, task_ids=self.table_task_ids, run_ids=[context["run_id"]]
        )
        states = states.get(context["run_id"], {})
        per_task = [
            [
                # Only the instances that ran have a record: pulling the others logs "XCom not found".
                ti.xcom_pull(task_ids=task_id, map_indexes=index)
                if states.get(f"{task_id}_{index}") in RECORDED_STATES
                else None
                for index in indexes
            ]
            for task_id in self.table_task_ids
        ]
        summaries = [
            summarize_table(label, *(_record(records[index]) for records in per_task))
            for index, label in enumerate(tables)
        ]
        return compose(
            summaries,
            dag_id=self.dag_id,
            run_id=context["run_id"],
            now=datetime.now(UTC),
            problem=problem,
            freshness=freshness,
            plan=plan,
        )


def _record(value: Any) -> TableResult | None:
    return None if value is None else TableResult.from_dict(value)
