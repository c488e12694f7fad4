#!/usr/bin/env bash
# MWAA startup script for cd2_replica.
#
# MWAA runs (sources) this on every component before Airflow starts, with a 5-minute limit, and passes
# the variables it exports on to Airflow. On components that run tasks it builds the DAP client's
# virtualenv from the wheels shipped in plugins.zip (no network, hashes checked against the bundled
# lock) and exports CD2_DAP_PYTHON, the interpreter the cd2 operators start per table. An identical
# virtualenv (same lock, same base Python) is reused. Any failure stops the script with a non-zero
# exit and "CD2 STARTUP FAILED" in the startup log.
#
# Overridable for tests and local runs:
#   CD2_PLUGINS_DIR   where plugins.zip was unpacked    (default /usr/local/airflow/plugins)
#   CD2_DAP_VENV      where the virtualenv is built     (default $AIRFLOW_HOME/cd2-dap-venv)
#   CD2_BASE_PYTHON   interpreter the venv is based on  (default python3, MWAA's Python 3.12)
# Never `exit` on success: when sourced that would end MWAA's wrapper before it records the exports.

cd2_plugins_dir="${CD2_PLUGINS_DIR:-/usr/local/airflow/plugins}"
cd2_dap_venv="${CD2_DAP_VENV:-${AIRFLOW_HOME:-/usr/local/airflow}/cd2-dap-venv}"
cd2_base_python="${CD2_BASE_PYTHON:-python3}"

# Components that run tasks: Celery workers, the combined worker/scheduler ("hybrid") of small
# environments, and a run outside MWAA (no component set). Schedulers, API servers, DAG processors
# and triggerers never start the DAP client.
case "${MWAA_AIRFLOW_COMPONENT:-}" in
    "" | worker | hybrid) cd2_runs_tasks=yes ;;
    *) cd2_runs_tasks=no ;;
esac

cd2_fail() {
    echo "CD2 STARTUP FAILED: $*" >&2
    echo "CD2 STARTUP FAILED: cd2_replica tasks cannot run on this ${MWAA_AIRFLOW_COMPONENT:-local} component" >&2
    return 1
}

# Runs pip with none of the PIP_* settings MWAA (or a developer) set for Airflow's own environment.
cd2_pip_install_offline() (
    while read -r name; do unset "$name"; done < <(compgen -e | grep '^PIP_')
    export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$cd2_dap_venv/bin/python" -m pip install --quiet --no-index --find-links "$1" \
        --only-binary=:all: --require-hashes --no-deps --no-cache-dir -r "$2"
)

# Explicit checks rather than `set -e`: errexit is void inside a function called from an `if`, and a
# sourced script must not change the caller's shell options.
cd2_build_dap_venv() {
    local wheels_dir="$cd2_plugins_dir/dap_wheels"
    local lock="$cd2_plugins_dir/dap_wheels/dap.txt"
    local stamp="$cd2_dap_venv/.cd2-lock-stamp"
    local lock_hash python_version expected_stamp

    [[ -f "$lock" ]] || { cd2_fail "no DAP lock at $lock (is plugins.zip from 'make bundle'?)"; return 1; }
    lock_hash="$(sha256sum "$lock" | cut -d' ' -f1)" || { cd2_fail "cannot hash $lock"; return 1; }
    python_version="$("$cd2_base_python" -c 'import sys; print(sys.version.split()[0])')" \
        || { cd2_fail "base interpreter '$cd2_base_python' does not run"; return 1; }
    expected_stamp="$lock_hash python-$python_version"

    if [[ -f "$stamp" && "$(cat "$stamp")" == "$expected_stamp" ]] \
        && "$cd2_dap_venv/bin/python" -c 'import dap' 2>/dev/null; then
        echo "cd2 startup: DAP virtualenv at $cd2_dap_venv is up to date; nothing to do"
        return 0
    fi

    echo "cd2 startup: building the DAP virtualenv at $cd2_dap_venv from $wheels_dir"
    rm -rf "$cd2_dap_venv" || { cd2_fail "cannot remove the old $cd2_dap_venv"; return 1; }
    "$cd2_base_python" -m venv "$cd2_dap_venv" || { cd2_fail "python -m venv $cd2_dap_venv failed"; return 1; }
    cd2_pip_install_offline "$wheels_dir" "$lock" \
        || { cd2_fail "pip could not install the locked wheels from $wheels_dir"; return 1; }
    "$cd2_dap_venv/bin/dap" --version || { cd2_fail "the installed dap client does not start"; return 1; }
    echo "$expected_stamp" > "$stamp" || { cd2_fail "cannot write $stamp"; return 1; }
}

if [[ "$cd2_runs_tasks" == yes ]]; then
    if cd2_build_dap_venv; then
        export CD2_DAP_PYTHON="$cd2_dap_venv/bin/python"
        echo "cd2 startup: CD2_DAP_PYTHON=$CD2_DAP_PYTHON"
    else
        exit 1
    fi
else
    echo "cd2 startup: component ${MWAA_AIRFLOW_COMPONENT} runs no tasks; no DAP virtualenv needed"
fi
