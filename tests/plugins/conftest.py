"""Put ``plugins/`` on sys.path as MWAA does, and keep Airflow away from ~/airflow."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

from tests.support.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "plugins"))
# Before anything imports airflow: a throwaway home (the hook tests only read env-var connections).
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cd2-airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
