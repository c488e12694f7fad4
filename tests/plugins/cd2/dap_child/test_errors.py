"""Classification by cause: real exception chains as the client raises them, classified in the DAP
interpreter (where the client's exception types live)."""

from __future__ import annotations

import json
import subprocess

from tests.support.paths import DAP_PYTHON, REPO_ROOT

SCRIPT = r"""
import errno, json, sys
sys.path.insert(0, sys.argv[1])
import asyncpg
from dap import dap_error
from pysqlsync.base import QueryException
from dap.api import DAPClientError
from cd2.dap_child.errors import PreviousCopyKept, classify

def wrapped(cause, query="ALTER TABLE canvas.users ALTER COLUMN x TYPE bigint"):
    try:
        try:
            raise cause
        except BaseException as error:
            raise QueryException(query) from error
    except QueryException as outer:
        return outer

def pg(cls, message, detail=None, hint=None):
    error = cls(message)
    error.detail, error.hint = detail, hint
    return error

def kept(cause):
    try:
        try:
            raise cause
        except BaseException as error:
            raise PreviousCopyKept("re-initialization of canvas.users failed; the previous copy is unchanged") from error
    except PreviousCopyKept as outer:
        return outer

cases = {
    "restart": wrapped(pg(asyncpg.AdminShutdownError, "terminating connection due to administrator command")),
    "view": wrapped(pg(asyncpg.DependentObjectsStillExistError, "cannot alter type of a column used by a view or rule",
                       detail='rule _RETURN on view canvas.v_users depends on column "x"', hint="drop the view")),
    "disk": kept(OSError(errno.ENOSPC, "No space left on device")),
    "group": ExceptionGroup("1 table could not be deleted", [pg(asyncpg.InsufficientPrivilegeError, "must be owner of table users")]),
    "tls": ConnectionError('PostgreSQL server at "db:5432" rejected SSL upgrade'),
    "unknown": ValueError("something new"),
    "job_failed": DAPClientError("Query job ended with status: failed. Please review the job logs."),
    "secret": wrapped(RuntimeError("could not reach postgresql://cd2:hunter2@db:5432/cd2"), "SELECT 1"),
    "long": wrapped(pg(asyncpg.SyntaxOrAccessError, "boom"), "INSERT INTO t VALUES " + "(1), " * 500),
}
print(json.dumps({name: classify(error).to_dict() for name, error in cases.items()}))
"""


def classified() -> dict:
    result = subprocess.run(
        [str(DAP_PYTHON), "-c", SCRIPT, str(REPO_ROOT / "plugins")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_errors_are_classified_by_their_cause_and_told_in_full():
    got = classified()
    restart = got["restart"]
    assert (restart["category"], restart["type"], restart["sqlstate"]) == (
        "transient",
        "AdminShutdownError",
        "57P01",
    )
    assert (
        "terminating connection" in restart["message"]
        and "statement: ALTER TABLE canvas.users" in restart["message"]
    )
    assert "view" not in restart["message"]

    view = got["view"]
    assert (view["category"], view["type"]) == ("permanent", "DependentObjectsStillExistError")
    assert 'DETAIL: rule _RETURN on view canvas.v_users depends on column "x"' in view["message"]
    assert "HINT: drop the view" in view["message"] and "What to do:" in view["message"]

    disk = got["disk"]
    assert (disk["category"], disk["type"]) == ("permanent", "OSError")
    assert disk["message"].startswith(
        "re-initialization of canvas.users failed; the previous copy is unchanged"
    )
    assert "TMPDIR" in disk["message"]

    assert (got["group"]["category"], got["group"]["type"]) == ("permanent", "InsufficientPrivilegeError")
    assert got["tls"]["category"] == "permanent" and "sslmode" in got["tls"]["message"]
    assert got["unknown"]["category"] == "unknown" and "retried once" in got["unknown"]["message"]
    assert (got["job_failed"]["category"], got["job_failed"]["type"]) == ("transient", "DAPClientError")
    assert "hunter2" not in got["secret"]["message"] and "cd2:***@db" in got["secret"]["message"]
    assert "\n" not in got["long"]["message"] and "..." in got["long"]["message"]
    assert len(got["long"]["message"]) < 700
