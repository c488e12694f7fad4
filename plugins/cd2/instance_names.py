"""Each mapped table task instance named by its table in every state, not only once it has run.

Airflow 3.2/3.3 set a mapped instance's name (``rendered_map_index``) only from inside the task, so an
instance that has not started (scheduled, queued), never starts (upstream_failed) or waits for its next
try shows a bare map index. Two pieces close that:

* ``name_expanded_instance``, a ``task_instance_mutation_hook`` cluster policy (registered by
  ``plugins/airflow_local_settings.py``): when the scheduler expands the table group, it names each new
  instance from the list of tables the expansion maps over (``list_tables``' result), read in the
  scheduler's own (thread-scoped) session.
* ``keep_name_on_retry``, a patch of the Task SDK, applied by the table operators in their task process:
  the SDK's ``RetryTask`` message carries no ``rendered_map_index`` (``_handle_current_task_failed``), so
  the API server clears the name when a try fails with a retry left. The patch copies the instance's
  name into that message. Version-gated to the Airflow versions known to drop it; remove it (and its
  call in ``cd2.operators.replicate``) once the SDK's ``RetryTask`` carries the name.
"""

from __future__ import annotations

from typing import Any

from cd2.dag_names import INIT_TASK_ID, LIST_TASK_ID, SYNC_TASK_ID

# Airflow versions (major.minor) whose Task SDK drops the name from RetryTask.
RETRY_DROPS_NAME = ("3.2", "3.3")


def name_expanded_instance(task_instance: Any) -> None:
    """Cluster policy: a newly expanded table instance takes its table's name."""
    # Imported here: Airflow imports this module while it initializes, before its configuration can be read.
    from cd2.instances import instance_of_dag

    if (
        task_instance.task_id not in (SYNC_TASK_ID, INIT_TASK_ID)
        or task_instance.map_index < 0
        or task_instance._rendered_map_index is not None
        or instance_of_dag(task_instance.dag_id) is None
    ):
        return
    from airflow import settings
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    # Airflow 3.2's hook gets no dag run (3.3's does); the scoped session is the scheduler's either way.
    listed = select(XComModel).where(
        XComModel.dag_id == task_instance.dag_id,
        XComModel.run_id == task_instance.run_id,
        XComModel.task_id == LIST_TASK_ID,
        XComModel.map_index == -1,
        XComModel.key == "return_value",
    )
    row = settings.Session().scalars(listed).first()
    labels = XComModel.deserialize_value(row) if row is not None else None
    if isinstance(labels, list) and task_instance.map_index < len(labels):
        task_instance._rendered_map_index = str(labels[task_instance.map_index])


def keep_name_on_retry() -> bool:
    """Make the Task SDK's retry message carry the instance's name; True if the patch is in place."""
    import airflow
    from airflow.sdk.execution_time import task_runner

    if ".".join(airflow.__version__.split(".")[:2]) not in RETRY_DROPS_NAME:
        return False
    failed = task_runner._handle_current_task_failed
    if getattr(failed, "keeps_name", False):
        return True

    def handle_current_task_failed(ti, *args, **kwargs):
        msg, state = failed(ti, *args, **kwargs)
        if isinstance(msg, task_runner.RetryTask) and msg.rendered_map_index is None:
            msg.rendered_map_index = ti.rendered_map_index
        return msg, state

    handle_current_task_failed.keeps_name = True
    task_runner._handle_current_task_failed = handle_current_task_failed
    return True
