"""The names the DAG defines and its readers (notify, the status page, the tests) look up."""

from __future__ import annotations

DAG_ID = "cd2_replica"
CONFIG_VARIABLE = "cd2_config"
LIST_TASK_ID = "list_tables"
NOTIFY_TASK_ID = "notify"
TABLE_GROUP_ID = "table"
SYNC_TASK = "sync"
INIT_TASK = "init"
SYNC_TASK_ID = f"{TABLE_GROUP_ID}.{SYNC_TASK}"
INIT_TASK_ID = f"{TABLE_GROUP_ID}.{INIT_TASK}"
