"""Keep Airflow away from ~/airflow (pyproject's ``pythonpath`` puts ``plugins/`` on sys.path)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before anything imports airflow: a throwaway home (the hook tests only read env-var connections).
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cd2-airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
