"""The patch registry (``cd2.dap_child.patches``): every patch fits the installed client, nothing else in
the child patches it, and a client whose code moved under a patch is caught before the patch runs.

"A client whose code moved" is real: a copy of the installed package (``pysqlsync`` or ``dap``) with one
method edited, put ahead of the installed one on the child's ``PYTHONPATH``; the version the child reads
is still the installed 2.3.1. The child is the product's own, run by :class:`DapHook` against the
emulator and PostgreSQL.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

from cd2.contract import Action, ContractError, ErrorCategory, Outcome, TableJob, TableResult
from cd2.hooks.dap import PASSED_THROUGH, DapHook, DapPermanentError
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child.driving import count_statements, statement_executions
from tests.support.paths import DAP_PYTHON, REPO_ROOT

PLUGINS = REPO_ROOT / "plugins"
CHILD = PLUGINS / "cd2" / "dap_child"
NS = "canvas"
ALL_PATCHES = [
    "accelerated_reader",
    "bulk_upsert",
    "streaming",
    "fast_init",
    "fast_sync",
    "download_check",
    "api_budget",
    "ddl_guard",
    "staging",
    "row_counts",
]
UPSERT_ROWS = "pysqlsync.dialect.postgresql.connection.PostgreSQLContext._upsert_rows"
DOWNLOAD_RESOURCE = "dap.api.DAPSession.download_resource"


def report(ahead: Path | None = None) -> dict:
    """``python -m cd2.dap_child.patches`` on the DAP interpreter, ``ahead`` first on its path."""
    path = [str(ahead)] if ahead else []
    result = subprocess.run(
        [str(DAP_PYTHON), "-m", "cd2.dap_child.patches"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(PLUGINS)])},
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def moved_client(folder: Path, package: str, module: str, method: str, edit: Callable) -> Path:
    """``folder`` holding a copy of the installed ``package`` in which ``edit(lines, node)`` changed the
    source lines of ``method`` (``Class.method``, its syntax tree ``node``) of ``module`` (a path inside
    the package)."""
    installed = subprocess.run(
        [str(DAP_PYTHON), "-c", f"import {package}; print({package}.__path__[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not (folder / package).exists():
        shutil.copytree(installed, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    source = folder / package / module
    lines = source.read_text().splitlines(keepends=True)
    class_name, name = method.split(".")
    owner = next(n for n in ast.parse("".join(lines)).body if getattr(n, "name", None) == class_name)
    edit(lines, next(n for n in owner.body if getattr(n, "name", None) == name))
    source.write_text("".join(lines))
    return folder


def opening(*new: str) -> Callable:
    """An edit: the lines ``new`` open the method's body."""

    def edit(lines: list[str], node: ast.FunctionDef) -> None:
        first = node.body[0]
        indent = " " * first.col_offset
        lines[first.lineno - 1 : first.lineno - 1] = [f"{indent}{line}\n" if line else "\n" for line in new]

    return edit


def rewording(old: str, new: str) -> Callable:
    """An edit: ``old`` becomes ``new`` in the method's lines."""

    def edit(lines: list[str], node: ast.FunctionDef) -> None:
        span = slice(node.lineno - 1, node.end_lineno)
        assert any(old in line for line in lines[span])
        lines[span] = [line.replace(old, new) for line in lines[span]]

    return edit


# -- the registry against the installed client ----------------------------------------------------------


def test_every_patch_fits_the_installed_client() -> None:
    got = report()
    assert got["client"] == "2.3.1"
    assert [patch["name"] for patch in got["patches"]] == ALL_PATCHES
    misfits = {patch["name"]: patch["misfit"] for patch in got["patches"] if patch["misfit"]}
    assert not misfits, (
        f"re-verify these patches on {got['client']} (docs/design.md, Patch registry): {misfits}"
    )
    switches = {patch["switch"] for patch in got["patches"]} - {None}
    assert switches == {
        "CD2_ACCELERATED_READER",
        "CD2_BULK_UPSERT",
        "CD2_STREAMING",
        "CD2_FAST_INIT",
        "CD2_FAST_SYNC",
    }
    assert switches <= set(PASSED_THROUGH), "the hook passes every switch to the child"
    kinds = {patch["name"]: patch["kind"] for patch in got["patches"]}
    assert [name for name, kind in kinds.items() if kind == "safety"] == ["download_check", "staging"]


def test_a_fingerprint_ignores_comments_and_docstrings_but_not_a_statement(tmp_path: Path) -> None:
    upsert_rows = ("pysqlsync", "base.py", "BaseContext._upsert_rows")
    reworded = tmp_path / "reworded"
    moved_client(reworded, *upsert_rows, opening("# a comment", ""))
    moved_client(
        reworded, *upsert_rows, rewording("Inserts or updates rows in a database table.", "Reworded.")
    )
    unchanged = report(reworded)
    assert all(patch["misfit"] is None for patch in unchanged["patches"]), unchanged

    moved = report(moved_client(tmp_path / "moved", *upsert_rows, opening("pass")))
    misfits = {patch["name"]: patch["misfit"] for patch in moved["patches"] if patch["misfit"]}
    assert misfits == {
        "bulk_upsert": f"the client's code under it moved since it was verified: {UPSERT_ROWS}"
    }


def _assignments(path: Path) -> list[str]:
    """Each assignment to an attribute (other than ``self.<name>``) and each ``setattr``/``delattr``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            own = isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self"
            if isinstance(target, ast.Attribute) and not own:
                found.append(f"{path.relative_to(CHILD)}:{node.lineno} {ast.unparse(target)}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("setattr", "delattr"):
            found.append(f"{path.relative_to(CHILD)}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_only_the_registry_changes_the_client() -> None:
    """A monkeypatch is an assignment to a module's or a class's attribute: outside the registry, the
    child assigns only its own objects' attributes."""
    modules = [path for path in CHILD.rglob("*.py") if "patches" not in path.relative_to(CHILD).parts]
    assert len(modules) > 10
    assert [found for path in modules for found in _assignments(path)] == []
    assert _assignments(CHILD / "patches" / "__init__.py"), "the scan sees the registry's own assignments"


def test_the_result_carries_the_active_patches() -> None:
    result = TableResult("canvas.users", Outcome.SYNCED, patches=["streaming", "staging"])
    assert TableResult.from_json(result.to_json()) == result
    with pytest.raises(ContractError, match="patches"):
        TableResult.from_dict({"label": "canvas.users", "outcome": "synced", "patches": "streaming"})


# -- the product's child, on the installed client and on a moved one -----------------------------------


class MovedClientHook(DapHook):
    """The product's hook, with a folder of edited client packages ahead of the installed ones."""

    def __init__(self, ahead: Path) -> None:
        super().__init__()
        self.ahead = ahead

    def child_environment(self, **kwargs) -> dict[str, str]:
        env = super().child_environment(**kwargs)
        env["PYTHONPATH"] = os.pathsep.join([str(self.ahead), env["PYTHONPATH"]])
        return env


@pytest.fixture
def connections(dap_emulator, database_url, monkeypatch) -> None:
    dap_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(dap_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    for switch in (
        "CD2_ACCELERATED_READER",
        "CD2_BULK_UPSERT",
        "CD2_STREAMING",
        "CD2_FAST_INIT",
        "CD2_FAST_SYNC",
    ):
        monkeypatch.delenv(switch, raising=False)


def run(hook: DapHook, action: Action, table: str) -> TableResult:
    return hook.run_table_job(TableJob(action=action, namespace=NS, table=table))


def patches_logged(task_log: str) -> list[str]:
    """What each "DAP client patches active" line of the task log names."""
    return re.findall(r"DAP client patches active: (\w+(?:, \w+)*)", task_log)


def test_the_task_log_names_the_active_patches_in_one_line(
    connections, dap_emulator, database_url, monkeypatch, capfd
) -> None:
    monkeypatch.setenv("CD2_STREAMING", "off")
    result = run(DapHook(), Action.INIT, "users")
    task_log = "".join(capfd.readouterr())
    expected = [name for name in ALL_PATCHES if name != "streaming"]
    assert result.outcome == "initialized" and result.patches == expected
    assert result.rows == dap_emulator.truth(NS, "users").count, "row_counts is active"
    assert patches_logged(task_log) == [", ".join(expected)]
    assert "patch streaming turned off by CD2_STREAMING" in task_log
    assert "left off" not in task_log


def test_a_switch_that_is_neither_on_nor_off_refuses_the_task_naming_it(
    connections, dap_emulator, database_url, monkeypatch
) -> None:
    monkeypatch.setenv("CD2_BULK_UPSERT", "O")  # a typo of 0, which reading as on would hide
    with pytest.raises(DapPermanentError, match="DapEnvironmentError") as refused:
        run(DapHook(), Action.INIT, "users")
    assert (
        "CD2_BULK_UPSERT='O' is neither on (1/true/yes/on) nor off (0/false/no/off)"
        in refused.value.error.message
    )


@pytest.mark.parametrize(
    ("setting", "value", "why"),
    [
        ("CD2_STREAMING_PREFETCH", "-1", "must be 0 or more"),
        ("CD2_FAST_INIT_CONNECTIONS", "0", "must be 1 or more"),
        ("CD2_FAST_LOAD_BATCH_BYTES", "32MB", "is not a whole number"),
    ],
)
def test_a_number_setting_the_child_cannot_use_refuses_the_task_naming_it(
    connections, dap_emulator, database_url, monkeypatch, setting, value, why
) -> None:
    monkeypatch.setenv(setting, value)
    with pytest.raises(DapPermanentError, match="DapEnvironmentError") as refused:
        run(DapHook(), Action.INIT, "users")
    assert f"{setting}={value!r} {why}" in refused.value.error.message


def test_a_speed_patch_whose_client_code_moved_is_left_off_and_the_clients_own_path_runs(
    connections, dap_emulator, postgres_server, database_url, tmp_path, capfd, monkeypatch
) -> None:
    hook = MovedClientHook(
        moved_client(tmp_path, "pysqlsync", "base.py", "BaseContext._upsert_rows", opening("pass"))
    )
    monkeypatch.setenv("CD2_FAST_SYNC", "0")  # the sync loader that bulk_upsert's batches go through
    expected = [name for name in ALL_PATCHES if name not in ("bulk_upsert", "fast_sync")]
    assert run(hook, Action.INIT, "users").patches == expected
    count_statements(postgres_server, database_url, f"{NS}.users")
    changes = dap_emulator.advance(changes=40, tables=[f"{NS}.users"])["changes"][f"{NS}.users"]

    result = run(hook, Action.SYNC, "users")
    task_log = "".join(capfd.readouterr())
    assert result.outcome == "synced" and result.patches == expected
    assert dap_emulator.truth(NS, "users") == replica_truth(database_url, NS, "users")
    upserted = sum(changes.get(kind, 0) for kind in ("insert", "update", "soft_delete"))
    # The client's own upsert executes one statement per row; the set-based one, one per batch.
    assert statement_executions(postgres_server, database_url)["INSERT"] > upserted / 2 > 3, changes
    warning = (
        f"patch bulk_upsert left off: the client's code under it moved since it was verified: {UPSERT_ROWS}"
    )
    assert task_log.count(warning) == 2, "one warning per child: init and sync"
    assert patches_logged(task_log) == [", ".join(expected)] * 2


def test_a_safety_patch_whose_client_code_moved_refuses_the_task(
    connections, dap_emulator, database_url, tmp_path
) -> None:
    hook = MovedClientHook(
        moved_client(
            tmp_path,
            "dap",
            "api.py",
            "DAPSession.download_resource",
            opening("output_directory = str(output_directory)"),
        )
    )
    with pytest.raises(DapPermanentError, match="PatchUnavailable") as refused:
        run(hook, Action.INIT, "users")
    error = refused.value.error
    assert error.category is ErrorCategory.PERMANENT and error.type == "PatchUnavailable"
    assert (
        "safety patch download_check does not fit instructure-dap-client 2.3.1: the client's code under it "
        f"moved since it was verified: {DOWNLOAD_RESOURCE}; the task refuses to run" in error.message
    )
    assert "Patch registry" in error.message, "it says what to do"
    assert not [r for r in dap_emulator.requests() if r["endpoint"] == "data"], "no job was created"
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace('instructure_dap'), to_regclass('canvas.users')")
        assert cur.fetchone() == (None, None), "the database was not touched"
