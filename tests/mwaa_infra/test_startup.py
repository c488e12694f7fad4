"""startup.sh on the unpacked bundle: an offline, hash-checked DAP virtualenv, built once, used by the hook."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

STARTUP = REPO_ROOT / "mwaa_infra" / "startup.sh"
# The interpreter the Airflow venv was made from: Python 3.12, as on MWAA.
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))
# What startup.sh leaves behind when sourced, as MWAA's wrapper reads it.
REPORT = 'printf "CD2_DAP_PYTHON=%s\\n" "${CD2_DAP_PYTHON:-}"'


def _network_isolation() -> list[str]:
    """A command prefix that removes the network (a new, empty network namespace), if this machine can."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def run_startup(plugins: Path, venv: Path, component: str | None, base_python: Path = BASE_PYTHON):
    """Source startup.sh as MWAA does, without network; returns (completed process, exported CD2_DAP_PYTHON)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CD2_DAP_PYTHON", "MWAA_AIRFLOW_COMPONENT")
    }
    env |= {"CD2_PLUGINS_DIR": str(plugins), "CD2_DAP_VENV": str(venv), "CD2_BASE_PYTHON": str(base_python)}
    # Where network isolation is not possible, any download attempt still fails fast on a dead proxy.
    env |= {
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    }
    if component is not None:
        env["MWAA_AIRFLOW_COMPONENT"] = component
    command = [*_network_isolation(), "bash", "-c", f'source "{STARTUP}"; {REPORT}']
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    exported = [
        line.split("=", 1)[1] for line in result.stdout.splitlines() if line.startswith("CD2_DAP_PYTHON=")
    ]
    return result, (exported[-1] if exported else None)


@pytest.fixture(scope="module")
def worker_venv(unpacked_plugins: Path, tmp_path_factory: pytest.TempPathFactory):
    """The first startup of a worker: builds the venv. Returns (venv folder, result, exported path)."""
    venv = tmp_path_factory.mktemp("worker") / "cd2-dap-venv"
    result, exported = run_startup(unpacked_plugins, venv, "worker")
    assert result.returncode == 0, result.stdout + result.stderr
    return venv, result, exported


def test_worker_startup_builds_the_dap_venv_offline_and_exports_its_python(worker_venv) -> None:
    venv, result, exported = worker_venv
    assert exported == str(venv / "bin" / "python")
    assert "building the DAP virtualenv" in result.stdout
    version = subprocess.run([str(venv / "bin" / "dap"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "2.3.1" in version.stdout


def test_the_venv_holds_exactly_the_locked_pins(worker_venv) -> None:
    venv, _, _ = worker_venv
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True
    )
    pins = {line.lower().replace("_", "-") for line in frozen.stdout.split()}
    lock = (REPO_ROOT / "locks" / "dap.txt").read_text()
    expected = {line.split(" ")[0].lower() for line in lock.splitlines() if "==" in line}
    assert pins == expected


def test_second_startup_is_a_no_op(worker_venv, unpacked_plugins: Path) -> None:
    venv, _, exported = worker_venv
    python_before = (venv / "bin" / "python").lstat().st_mtime_ns
    site_before = sorted(p.name for p in (venv / "lib").rglob("*.dist-info"))
    result, exported_again = run_startup(unpacked_plugins, venv, "worker")
    assert result.returncode == 0, result.stderr
    assert "up to date; nothing to do" in result.stdout
    assert "building" not in result.stdout
    assert exported_again == exported
    assert (venv / "bin" / "python").lstat().st_mtime_ns == python_before
    assert sorted(p.name for p in (venv / "lib").rglob("*.dist-info")) == site_before


def test_the_hook_runs_what_startup_exported(worker_venv, unpacked_plugins: Path, tmp_path: Path) -> None:
    """DapHook (from the unpacked plugins) picks the exported interpreter, which runs the cd2 child package."""
    _, _, exported = worker_venv
    script = (
        "from cd2.hooks.dap import DapHook, PLUGINS_DIR\nprint(DapHook().interpreter())\nprint(PLUGINS_DIR)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env |= {"AIRFLOW_HOME": str(tmp_path), "CD2_DAP_PYTHON": exported, "PYTHONPATH": str(unpacked_plugins)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    interpreter, plugins_dir = result.stdout.split()
    assert interpreter == exported and Path(plugins_dir) == unpacked_plugins
    child = subprocess.run(
        [interpreter, "-c", "import dap, cd2.dap_child, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": plugins_dir},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert Path(child.stdout.strip()) == Path(exported).parent.parent


def test_a_venv_stamped_with_another_lock_is_rebuilt(unpacked_plugins: Path, tmp_path: Path) -> None:
    """What a new plugins.zip with a changed lock finds on a worker that ran the previous one."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".cd2-lock-stamp").write_text("0000-a-previous-lock python-3.12.13\n")
    (venv / "left-by-the-previous-build").write_text("")
    result, exported = run_startup(unpacked_plugins, venv, "hybrid")
    assert result.returncode == 0, result.stderr
    assert "building the DAP virtualenv" in result.stdout and exported == str(venv / "bin" / "python")
    assert not (venv / "left-by-the-previous-build").exists()
    assert (venv / ".cd2-lock-stamp").read_text().split()[0] == hashlib.sha256(
        (unpacked_plugins / "dap_wheels" / "dap.txt").read_bytes()
    ).hexdigest()


@pytest.mark.parametrize("component", ["scheduler", "webserver", "dag-processor", "triggerer"])
def test_components_that_run_no_tasks_build_nothing(
    component: str, unpacked_plugins: Path, tmp_path: Path
) -> None:
    result, exported = run_startup(unpacked_plugins, tmp_path / "venv", component)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "venv").exists()
    assert exported == ""
    assert "runs no tasks" in result.stdout


def test_missing_wheels_fail_loudly(tmp_path: Path) -> None:
    result, exported = run_startup(tmp_path / "no-plugins", tmp_path / "venv", "worker")
    assert result.returncode != 0
    assert "CD2 STARTUP FAILED" in result.stderr and "no DAP lock" in result.stderr
    assert exported is None  # the sourcing shell stopped: nothing is exported


def test_an_uninstallable_wheel_set_fails_loudly(unpacked_plugins: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    shutil.copytree(unpacked_plugins, plugins)
    for wheel in (plugins / "dap_wheels").glob("instructure_dap_client-*.whl"):
        wheel.unlink()
    result, exported = run_startup(plugins, tmp_path / "venv", "worker")
    assert result.returncode != 0
    assert "CD2 STARTUP FAILED: pip could not install the locked wheels" in result.stderr
    assert exported is None
