"""The cluster policy registers once with Airflow's policy manager, from the plugins folder or when
another ``airflow_local_settings`` that comes first on the path runs this one (as MWAA's does)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import REPO_ROOT

PLUGINS = REPO_ROOT / "plugins"
REGISTERED = (
    "from airflow import settings\n"
    "from airflow.plugins_manager import ensure_plugins_loaded\n"
    "ensure_plugins_loaded()  # imports every file in the plugins folder again\n"
    "impls = settings.get_policy_plugin_manager().hook.task_instance_mutation_hook.get_hookimpls()\n"
    "print([impl.plugin_name for impl in impls], settings.task_instance_mutation_hook.is_noop)\n"
)


@pytest.mark.parametrize("shadowed", [False, True], ids=["plugins folder", "shadowed"])
def test_the_naming_policy_is_registered_once(tmp_path, shadowed):
    if shadowed:
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "airflow_local_settings.py").write_text(
            f"import runpy\nrunpy.run_path({str(PLUGINS / 'airflow_local_settings.py')!r})\n"
        )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    out = subprocess.run(
        [sys.executable, "-c", REGISTERED], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "['cd2'] False"


def test_the_retry_patch_applies_to_this_airflow_once():
    from airflow.sdk.execution_time import task_runner

    from cd2.instance_names import keep_name_on_retry

    assert keep_name_on_retry()
    patched = task_runner._handle_current_task_failed
    assert patched.keeps_name and keep_name_on_retry() and task_runner._handle_current_task_failed is patched
