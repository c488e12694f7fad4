"""What the Airflow side and the DAP child process agree on: actions, environment, result shape."""

from __future__ import annotations

# Environment variables the child reads (secrets travel only this way, never in argv).
ENV_API_URL = "DAP_API_URL"
ENV_CLIENT_ID = "DAP_CLIENT_ID"
ENV_CLIENT_SECRET = "DAP_CLIENT_SECRET"
ENV_DATABASE_URL = "CD2_DATABASE_URL"
# File descriptor number the child writes its one JSON result line to.
ENV_RESULT_FD = "CD2_RESULT_FD"

ACTION_LIST = "list"
ACTION_SYNC = "sync"
ACTION_INIT = "init"

# Values of a result's "action".
LISTED = "listed"
SYNCED = "synced"
INITIALIZED = "initialized"
INIT_NEEDED = "init_needed"

# Values of a failed result's error "category".
TRANSIENT = "transient"
PERMANENT = "permanent"
